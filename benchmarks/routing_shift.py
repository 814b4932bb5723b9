"""Routing under a length shift: does an input still reach its task when it is much shorter?

Routing statistics are fitted on each task's training texts (whole articles, paragraphs or
sentences, depending on the corpus). Users often send one line. This scores routing on every
test input whole and on its first sentence alone, for each selector, with the statistics fitted
on the training texts as the pool does, and with up to ``k`` of each training text's sentences
added to them (a candidate remedy). Writes results.json and report.md to --out.

    python benchmarks/routing_shift.py --spans 0 1 3
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import sys
import time
from pathlib import Path

from continual.backbone import Backbone
from continual.bench.sequences import load_sequence
from continual.selector import build_selector
from continual.storage import atomic_write_bytes

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str, min_words: int = 4) -> list[str]:
    return [part for part in _SENTENCE_END.split(text) if len(part.split()) >= min_words]


def first_sentence(text: str) -> str:
    found = sentences(text)
    return found[0] if found else text


def with_spans(texts: list[str], spans: int, rng: random.Random) -> list[str]:
    """``texts`` plus up to ``spans`` random sentences of each text that has more than one."""
    extra = []
    for text in texts:
        parts = sentences(text)
        if len(parts) > 1:
            extra += rng.sample(parts, min(spans, len(parts)))
    return texts + extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", default="text4")
    parser.add_argument("--selectors", nargs="+", default=["gaussian", "prototypes"])
    parser.add_argument("--spans", nargs="+", type=int, default=[0, 1, 3],
                        help="sentences per training text added to the routing statistics")
    parser.add_argument("--train-per-label", type=int, default=64)
    parser.add_argument("--test-per-label", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--query-layer", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/routing_shift"))
    args = parser.parse_args()

    started = time.perf_counter()
    backbone = Backbone.load(max_length=args.max_length, query_layer=args.query_layer)
    tasks = load_sequence(args.sequence, seed=args.seed, train_per_label=args.train_per_label,
                          test_per_label=args.test_per_label, validation_per_label=16)
    rows = []
    for selector_name in args.selectors:
        for spans in args.spans:
            selector = build_selector(selector_name)
            rng = random.Random(args.seed)
            states: list = []
            for task in tasks:
                texts = with_spans([text for text, _ in task.train], spans, rng)
                states.append(selector.fit_task(backbone.query(texts), states, seed=args.seed))
            row = {"selector": selector_name, "spans": spans}
            for inputs, shorten in (("whole", lambda text: text), ("first_sentence", first_sentence)):
                per_task = {}
                for index, task in enumerate(tasks):
                    texts = [shorten(text) for text, _ in task.test]
                    routed, _ = selector.route(backbone.query(texts), states)
                    per_task[task.name] = round(100 * (routed == index).float().mean().item(), 1)
                row[inputs] = {"per_task": per_task,
                               "mean": round(sum(per_task.values()) / len(per_task), 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(part) for part in sys.argv)
    result = {"command": command, "config": {k: str(v) if isinstance(v, Path) else v
                                             for k, v in vars(args).items()},
              "wall_seconds": round(time.perf_counter() - started, 1), "rows": rows}
    atomic_write_bytes(args.out / "results.json", (json.dumps(result, indent=2) + "\n").encode())
    names = [task.name for task in tasks]
    lines = [
        f"# Routing under a length shift (`{args.sequence}`)", "",
        f"Made by: `{command}`", "",
        "Routing accuracy % per task: each test input whole, and its first sentence alone. "
        "`spans`: sentences per training text added to the routing statistics (0 = as the pool "
        "fits them).", "",
        "| selector | spans | " + " | ".join(f"whole: {n}" for n in names)
        + " | whole mean | " + " | ".join(f"first: {n}" for n in names) + " | first mean |",
        "|---|---|" + "---|" * (2 * len(names) + 2),
    ]
    for row in rows:
        cells = [row["selector"], str(row["spans"])]
        for inputs in ("whole", "first_sentence"):
            cells += [f"{row[inputs]['per_task'][n]:.1f}" for n in names]
            cells.append(f"{row[inputs]['mean']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_bytes(args.out / "report.md", ("\n".join(lines) + "\n").encode())
    print(f"results in {args.out}/ (results.json, report.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
