"""The figures of the Guarantees page (docs/concepts/guarantees.md): run the reliability suites several times and count.

Each run is a fresh ``pytest tests/reliability`` with ``$CONTINUAL_COUNTS`` set, so every
property-based module and the fault-injection test append what they checked (generated inputs,
damaged pools, SIGKILLs, checks after kills) as JSON lines; hand-written cases are counted from
pytest's JUnit report. Writes results.json and report.md (ranges over the runs) to --out.

    python benchmarks/guarantees.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

from continual.files import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent


def one_run(folder: Path) -> dict[str, dict[str, int]]:
    """Counts of one suite run: {what: {count name: value}}, plus passed/failed per module."""
    counts_file, junit = folder / "counts.jsonl", folder / "junit.xml"
    env = {**os.environ, "CONTINUAL_COUNTS": str(counts_file)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/reliability",
            f"--junitxml={junit}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"the reliability suites failed:\n{result.stdout[-3000:]}")
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for line in counts_file.read_text().splitlines():
        record = json.loads(line)
        what = record.pop("what")
        for key, value in record.items():
            counts[what][key] = counts[what].get(key, 0) + int(value)
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "?").rsplit(".", 1)[-1]
        outcome = "skipped" if case.find("skipped") is not None else "passed"
        counts[f"tests in {module}"][outcome] = counts[f"tests in {module}"].get(outcome, 0) + 1
    return dict(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/guarantees"))
    args = parser.parse_args()
    started = time.perf_counter()
    runs = []
    for number in range(args.runs):
        with tempfile.TemporaryDirectory() as scratch:
            runs.append(one_run(Path(scratch)))
        print(
            f"run {number + 1}/{args.runs}: {json.dumps(runs[-1], sort_keys=True)}",
            file=sys.stderr,
            flush=True,
        )
    ranges: dict[str, dict[str, list[int]]] = {}
    for what in sorted({what for run in runs for what in run}):
        keys = sorted({key for run in runs for key in run.get(what, {})})
        ranges[what] = {
            key: [
                min(run.get(what, {}).get(key, 0) for run in runs),
                max(run.get(what, {}).get(key, 0) for run in runs),
            ]
            for key in keys
        }
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    summary = {
        "command": command,
        "runs": len(runs),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "ranges": ranges,
        "per_run": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "results.json", (json.dumps(summary, indent=2) + "\n").encode())
    lines = [
        f"# Reliability guarantees, counted over {len(runs)} runs",
        "",
        f"Made by: `{command}`",
        "",
        "| what | count | min | max |",
        "|---|---|---|---|",
    ]
    for what, keys in ranges.items():
        lines += [f"| {what} | {key} | {low} | {high} |" for key, (low, high) in keys.items()]
    atomic_write_bytes(args.out / "report.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
