"""Routing under a length shift: does an input still reach its task when it is much shorter?

Routing statistics are fitted on each task's training texts (whole articles, paragraphs or
sentences, depending on the corpus). Users often send one line. This scores routing on every
test input in four views: whole; its first sentence; its headline (the text before the first
". ", which for BBC articles is the headline line); and a mixed-length view (each input, seeded,
whole, its first sentence or a window of 1-3 sentences). Each selector is fitted as the pool
fits it (its own training views and features), optionally with up to ``k`` of each training
text's sentences added (``--spans``). The pool's default selector is reported on its own as
``"default"``. Writes results.json and report.md to --out.

    python benchmarks/routing_shift.py
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
from continual.files import atomic_write_bytes
from continual.placement import PLACEMENTS, Placement
from continual.selector import DEFAULT_SELECTOR, build_selector, first_sentence

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str, min_words: int = 4) -> list[str]:
    return [part for part in _SENTENCE_END.split(text) if len(part.split()) >= min_words]


def headline(text: str) -> str:
    """The text before its first ". " (a BBC article's headline line), else the whole text."""
    return text.split(". ", 1)[0]


def mixed(text: str, rng: random.Random) -> str:
    """The text whole, its first sentence, or a window of 1-3 sentences, chosen by ``rng``."""
    parts = sentences(text)
    kind = rng.choice(("whole", "first", "window"))
    if kind == "whole" or len(parts) < 2:
        return text if kind != "first" else first_sentence(text)
    if kind == "first":
        return parts[0]
    size = rng.randint(1, min(3, len(parts)))
    start = rng.randrange(0, len(parts) - size + 1)
    return " ".join(parts[start : start + size])


VIEWS = ("whole", "first_sentence", "headline", "mixed")


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
    parser.add_argument(
        "--selectors", nargs="+", default=[DEFAULT_SELECTOR, "gaussian", "prototypes"]
    )
    parser.add_argument(
        "--spans",
        nargs="+",
        type=int,
        default=[0],
        help="sentences per training text added to the routing statistics",
    )
    parser.add_argument("--train-per-label", type=int, default=64)
    parser.add_argument("--test-per-label", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--query-layer", type=int, default=3)
    parser.add_argument(
        "--query-layer-only",
        action="store_true",
        help=f"route {DEFAULT_SELECTOR} on the query layer alone (no pass above it)",
    )
    parser.add_argument(
        "--backbone", help="a hub name, folder or .gguf file (default: the packaged MiniLM)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--placement",
        choices=list(PLACEMENTS),
        default="input",
        help="query_layer: route as a pool whose prompts enter at the query layer does (the "
        "query layer alone, with 16 placeholder positions before each input)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/routing_shift"))
    args = parser.parse_args()

    started = time.perf_counter()
    backbone = Backbone.load(
        args.backbone, max_length=args.max_length, query_layer=args.query_layer
    )
    tasks = load_sequence(
        args.sequence,
        seed=args.seed,
        train_per_label=args.train_per_label,
        test_per_label=args.test_per_label,
        validation_per_label=16,
    )
    placement = Placement(args.placement)
    prefix = placement.query_prefix(16)  # the pool's default prompt length
    rows = []
    for selector_name in args.selectors:
        for spans in args.spans:
            query_only = placement.deep or args.query_layer_only
            selector = build_selector(
                {"name": selector_name, "last_layer": False}
                if query_only and selector_name == DEFAULT_SELECTOR
                else selector_name
            )
            rng = random.Random(args.seed)
            states: list = []
            for task in tasks:
                texts = with_spans([text for text, _ in task.train], spans, rng)
                # As PromptPool.add_trained: the selector's own training views and features.
                texts = selector.training_texts(texts)
                queries = backbone.query(texts, with_last=selector.with_last, prefix=prefix)
                states.append(selector.fit_task(queries, states, seed=args.seed))
            bytes_per_task = sum(t.numel() * t.element_size() for t in states[0].values())
            row = {"selector": selector_name, "spans": spans, "bytes_per_task": bytes_per_task}
            for view in VIEWS:
                shorten = {
                    "whole": lambda text: text,
                    "first_sentence": first_sentence,
                    "headline": headline,
                }.get(view)
                view_rng = random.Random(args.seed)
                per_task = {}
                for index, task in enumerate(tasks):
                    texts = [
                        shorten(text) if shorten else mixed(text, view_rng) for text, _ in task.test
                    ]
                    queries = backbone.query(texts, with_last=selector.with_last, prefix=prefix)
                    routed, _ = selector.route(queries, states)
                    per_task[task.name] = round(100 * (routed == index).float().mean().item(), 1)
                row[view] = {
                    "per_task": per_task,
                    "mean": round(sum(per_task.values()) / len(per_task), 1),
                }
            rows.append(row)
            print(json.dumps(row), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(part) for part in sys.argv)
    result = {
        "command": command,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "default": next(
            (row for row in rows if row["selector"] == DEFAULT_SELECTOR and row["spans"] == 0), None
        ),
        "rows": rows,
    }
    atomic_write_bytes(args.out / "results.json", (json.dumps(result, indent=2) + "\n").encode())
    names = [task.name for task in tasks]
    lines = [
        f"# Routing under a length shift (`{args.sequence}`)",
        "",
        f"Made by: `{command}`",
        "",
        f"Routing accuracy % (mean over tasks, then per task) in four views of each test input: "
        "whole; first sentence; headline (text before the first '. ', a BBC article's headline "
        "line); mixed (seeded: whole, first sentence or a 1-3 sentence window). `spans`: "
        "sentences per training text added to the routing statistics (0 = as the pool fits "
        f"them). The pool's default selector is `{DEFAULT_SELECTOR}`. Placement of the "
        f"prompts: `{args.placement}`. Backbone: `{backbone.name}`, query layer "
        f"{backbone.query_layer} of {backbone.num_layers}"
        + (" (routed on it alone)" if args.query_layer_only else "")
        + ".",
        "",
        "| selector | spans | selector bytes/task | "
        + " | ".join(VIEWS)
        + " | "
        + " | ".join(f"{view}: {n}" for view in ("whole", "first_sentence") for n in names)
        + " | headline: bbc |",
        "|---|---|---|" + "---|" * (len(VIEWS) + 2 * len(names) + 1),
    ]
    for row in rows:
        cells = [row["selector"], str(row["spans"]), f"{row['bytes_per_task'] / 1e6:.2f} MB"]
        cells += [f"{row[view]['mean']:.1f}" for view in VIEWS]
        cells += [
            f"{row[view]['per_task'][n]:.1f}" for view in ("whole", "first_sentence") for n in names
        ]
        cells.append(f"{row['headline']['per_task'].get('bbc', float('nan')):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_bytes(args.out / "report.md", ("\n".join(lines) + "\n").encode())
    print(f"results in {args.out}/ (results.json, report.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
