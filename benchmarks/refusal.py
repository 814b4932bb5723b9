"""Calibrated refusal: does a pool refuse inputs from a task it never learned, and how many
inputs of the tasks it did learn does it wrongly refuse?

For each task of the sequence in turn, a pool learns the others (leave one out) and then sees
the test inputs of all of them: the held-out task's inputs should be refused, the known tasks'
should not. Refusal is ``PromptPool.route(texts, refuse=share)`` (as ``predict`` refuses, without
the prompted pass that labels the kept inputs): a routed input is refused
when it matches its task, by that task's statistics alone, worse than ``share`` of the task's
own validation inputs did (``PromptPool.calibration``). Refusal is a routing decision, so the
prompts here are left untrained (they do not change which inputs are refused). Inputs are
scored whole and cut to their first sentence. Writes results.json and report.md to --out.

    python benchmarks/refusal.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from continual import Backbone, PromptPool, TaskEntry
from continual.bench.sequences import load_sequence
from continual.files import atomic_write_bytes
from continual.prompt import SoftPrompt
from continual.selector import UNKNOWN_TASK, first_sentence

SHARES = (0.01, 0.02, 0.05, 0.1, 0.2)


def untrained_entry(backbone: Backbone, name: str, labels: list[str]) -> TaskEntry:
    prompt = SoftPrompt.initialise(
        backbone, 16, "vocab", generator=torch.Generator().manual_seed(0)
    )
    return TaskEntry(
        name=name,
        labels=labels,
        prompt=prompt.vectors.detach(),
        head_weight=torch.zeros(len(labels), backbone.hidden_size),
        head_bias=torch.zeros(len(labels)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", default="text4")
    parser.add_argument("--train-per-label", type=int, default=64)
    parser.add_argument("--test-per-label", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/refusal"))
    args = parser.parse_args()

    started = time.perf_counter()
    backbone = Backbone.load(max_length=64, query_layer=3)
    tasks = load_sequence(
        args.sequence,
        seed=args.seed,
        train_per_label=args.train_per_label,
        test_per_label=args.test_per_label,
        validation_per_label=16,
    )
    views = {"whole": lambda text: text, "first_sentence": first_sentence}
    rows = []
    for held_out in tasks:
        pool = PromptPool(backbone, prompt_length=16)
        for task in tasks:
            if task is not held_out:
                pool.add_trained(task, untrained_entry(backbone, task.name, list(task.labels)))
        for view, shorten in views.items():
            known = [
                shorten(text) for task in tasks if task is not held_out for text, _ in task.test
            ]
            unseen = [shorten(text) for text, _ in held_out.test]
            row: dict = {"held_out": held_out.name, "view": view, "shares": {}}
            for share in SHARES:
                routed, _ = pool.route(known + unseen, refuse=share)
                refused = routed == UNKNOWN_TASK
                known_refused = int(refused[: len(known)].sum())
                unseen_refused = int(refused[len(known) :].sum())
                row["shares"][str(share)] = {
                    "known_refused": round(100 * known_refused / len(known), 1),
                    "unseen_refused": round(100 * unseen_refused / len(unseen), 1),
                }
            rows.append(row)
            print(json.dumps(row), flush=True)

    summary: dict = {}
    for view in views:
        summary[view] = {}
        for share in SHARES:
            picked = [row["shares"][str(share)] for row in rows if row["view"] == view]
            summary[view][str(share)] = {
                key: round(sum(p[key] for p in picked) / len(picked), 1)
                for key in ("known_refused", "unseen_refused")
            }
    command = "python " + " ".join(shlex.quote(part) for part in sys.argv)
    result = {
        "command": command,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "selector": PromptPool(backbone).selector.config(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "mean_over_held_out_tasks": summary,
        "rows": rows,
    }
    lines = [
        "# Calibrated refusal (leave one task out)",
        "",
        f"Command: `{command}`. Each task in turn is left out of a pool of the others; "
        "`predict(refuse=share)` should refuse its inputs and keep the known tasks' inputs. "
        "Means over the held-out tasks, % of inputs refused.",
        "",
        "| view | share | known inputs refused | unseen task's inputs refused |",
        "|---|---|---|---|",
    ]
    for view in views:
        for share in SHARES:
            cell = summary[view][str(share)]
            lines.append(
                f"| {view} | {share} | {cell['known_refused']} | {cell['unseen_refused']} |"
            )
    lines += ["", "| held-out task | view | share 0.05: known refused | unseen refused |"]
    lines.append("|---|---|---|---|")
    for row in rows:
        cell = row["shares"]["0.05"]
        lines.append(
            f"| {row['held_out']} | {row['view']} | {cell['known_refused']} | "
            f"{cell['unseen_refused']} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "results.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out / "report.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
