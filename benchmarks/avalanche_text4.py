"""Run the prompt pool on the text4 sequence through Avalanche and compare metrics.

The pool learns bbc, reviews, debates and conventions one experience at a time inside
Avalanche (`PromptPoolStrategy`), is evaluated on the whole test stream after each experience by
Avalanche's EvaluationPlugin (accuracy, forgetting and BWT; a TextLogger writes its log, the
InteractiveLogger is off), and on each learned task by our own `PromptPool.evaluate`. The final
Avalanche numbers are printed next to the same metrics computed from our accuracy matrix R, and
both are written to ``--out`` as JSON.

    python benchmarks/avalanche_text4.py --out results/avalanche_text4.json
    python benchmarks/avalanche_text4.py --train-per-label 8 --test-per-label 8 --epochs 1 \\
        --out /tmp/avalanche_text4.json          # a quick smoke run

Avalanche's StreamAccuracy pools every test example of the stream, so tasks with more test
examples weigh more; our average accuracy is the mean over tasks. Both are reported, plus the
example-weighted mean of our last row, which is the quantity Avalanche computes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--log",
        type=Path,
        default=None,
        help="Avalanche TextLogger file (default: --out with .log)",
    )
    # Defaults match `continual run`'s, so the numbers sit next to results/text4.
    parser.add_argument("--train-per-label", type=int, default=64)
    parser.add_argument("--test-per-label", type=int, default=50)
    parser.add_argument("--validation-per-label", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4, help="pool training epochs per task")
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument(
        "--selector", default="gaussian", choices=["gaussian", "prototypes", "keys"]
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported here so that --help answers without loading torch and Avalanche.
    from avalanche.evaluation.metrics import (
        accuracy_metrics,
        bwt_metrics,
        forgetting_metrics,
    )
    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    from continual import Backbone, PromptPool, TrainingConfig, metrics
    from continual.bench.sequences import load_sequence
    from continual.integrations.avalanche import PromptPoolStrategy, tasks_to_benchmark

    backbone = Backbone.load(max_length=args.max_length)
    tasks = load_sequence(
        "text4",
        seed=args.seed,
        train_per_label=args.train_per_label,
        test_per_label=args.test_per_label,
        validation_per_label=args.validation_per_label,
    )
    # Task label 0 everywhere: Avalanche's evaluation routes with the selector, as ours does.
    benchmark = tasks_to_benchmark(tasks, backbone, task_labels=False)
    pool = PromptPool(
        backbone,
        prompt_length=args.prompt_length,
        selector=args.selector,
        training=TrainingConfig(epochs=args.epochs),
    )
    log_path = args.log or args.out.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    count = len(tasks)
    R = np.full((count, count), np.nan)  # fractions: R[i][j] on task j after learning task i
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            bwt_metrics(experience=True, stream=True),
            loggers=[TextLogger(log)],
        )
        strategy = PromptPoolStrategy(pool=pool, evaluator=evaluator, seed=args.seed)
        for i, experience in enumerate(benchmark.train_stream):
            strategy.train(experience, eval_streams=[])
            strategy.eval(benchmark.test_stream)
            for j in range(i + 1):
                R[i, j] = pool.evaluate(tasks[j]).accuracy / 100
            print(
                f"after {tasks[i].name:12s} "
                + "  ".join(f"{tasks[j].name}={R[i, j]:.3f}" for j in range(i + 1)),
                flush=True,
            )
    seconds = time.perf_counter() - started

    last = evaluator.get_last_metrics()
    stream_accuracy = next(
        value
        for name, value in last.items()
        if name.startswith("Top1_Acc_Stream/eval_phase/test_stream")
    )
    avalanche = {
        "stream_accuracy": stream_accuracy,
        "stream_forgetting": last["StreamForgetting/eval_phase/test_stream"],
        "stream_bwt": last["StreamBWT/eval_phase/test_stream"],
        "experience_accuracy": [
            last[f"Top1_Acc_Exp/eval_phase/test_stream/Task{j:03d}/Exp{j:03d}"]
            for j in range(count)
        ],
    }
    sizes = np.array([len(task.test) for task in tasks], dtype=float)
    ours = {
        "average_accuracy": metrics.average_accuracy(R),
        "example_weighted_accuracy": float((R[-1] * sizes).sum() / sizes.sum()),
        "avalanche_forgetting": metrics.avalanche_forgetting(R),
        "bwt": metrics.backward_transfer(R),
        "chaudhry_forgetting": metrics.forgetting(R),
        "last_row": R[-1].tolist(),
    }
    rows = [
        (
            "accuracy (pooled examples)",
            avalanche["stream_accuracy"],
            ours["example_weighted_accuracy"],
        ),
        ("accuracy (mean over tasks)", None, ours["average_accuracy"]),
        (
            "forgetting (R[j][j] - R[T][j])",
            avalanche["stream_forgetting"],
            ours["avalanche_forgetting"],
        ),
        ("BWT", avalanche["stream_bwt"], ours["bwt"]),
        ("forgetting (Chaudhry, max)", None, ours["chaudhry_forgetting"]),
    ]
    print(f"\n{'metric':34s} {'Avalanche':>10s} {'ours':>10s}")
    for label, theirs, mine in rows:
        shown = "-" if theirs is None else f"{theirs:.4f}"
        print(f"{label:34s} {shown:>10s} {mine:>10.4f}")

    result = {
        "sequence": [task.name for task in tasks],
        "config": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        },
        "versions": {
            "avalanche-lib": version("avalanche-lib"),
            "torch": version("torch"),
            "python": sys.version.split()[0],
        },
        "seconds": round(seconds, 2),
        "avalanche": avalanche,
        "ours": ours,
        "accuracy_matrix": [[None if np.isnan(v) else float(v) for v in row] for row in R],
        "test_examples": [len(task.test) for task in tasks],
        "class_ids": strategy.class_ids,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} (Avalanche log: {log_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
