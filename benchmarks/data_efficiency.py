"""Data efficiency: accuracy against training examples per class, one task at a time.

Prompt tuning (a soft prompt and head, backbone frozen), a linear probe (frozen features) and
full fine-tuning learn each task alone from k examples per class, on the same splits and seed;
each is scored on the same test split. Writes results.json, report.md and a plot to --out.

    python benchmarks/data_efficiency.py --tasks bbc reviews --shots 8 32 128 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from continual import metrics
from continual.backbone import Backbone
from continual.bench import plots
from continual.bench.baselines import ClassIncremental
from continual.bench.corpora import load_corpus
from continual.data import Task
from continual.files import atomic_write_bytes
from continual.learner import TrainingConfig
from continual.pool import PromptPool

METHODS = ("prompt-tuning", "linear-probe", "fine-tuning")


def subsample(task: Task, shots: int) -> Task:
    """The first ``shots`` training examples of every label (the splits are already shuffled)."""
    kept: dict[str, int] = {}
    train = []
    for text, label in task.train:
        if kept.get(label, 0) < shots:
            kept[label] = kept.get(label, 0) + 1
            train.append((text, label))
    return Task(
        name=task.name, train=train, validation=task.validation, test=task.test, labels=task.labels
    )


def score(
    method: str, backbone: Backbone, task: Task, args: argparse.Namespace, seed: int
) -> float:
    if method == "prompt-tuning":
        pool = PromptPool(
            backbone,
            prompt_length=args.prompt_length,
            selector="oracle",
            training=TrainingConfig(epochs=args.epochs),
        )
        pool.learn(task, seed=seed, progress=False)
        return pool.evaluate(task, oracle=True).accuracy
    learner = ClassIncremental(
        method,
        backbone,
        finetune=method == "fine-tuning",
        epochs=args.finetune_epochs if method == "fine-tuning" else args.epochs * 4,
        seed=seed,
        progress=False,
    )
    learner.learn(task)
    return learner.evaluate(task).accuracy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["bbc", "reviews"])
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--test-per-label", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=4, help="prompt-tuning epochs at most")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("results/data_efficiency"))
    args = parser.parse_args()

    backbone = Backbone.load(max_length=args.max_length)
    largest = max(args.shots)
    table: dict[str, dict[str, dict[int, list[float]]]] = {}
    seconds: dict[str, float] = dict.fromkeys(args.methods, 0.0)
    for name in args.tasks:
        full = load_corpus(
            name,
            train_per_label=largest,
            test_per_label=args.test_per_label,
            validation_per_label=16,
        )
        for shots in args.shots:
            task = subsample(full, shots)
            for method in args.methods:
                for seed in args.seeds:
                    start = time.perf_counter()
                    accuracy = score(method, backbone, task, args, seed)
                    seconds[method] += time.perf_counter() - start
                    table.setdefault(name, {}).setdefault(method, {}).setdefault(shots, [])
                    table[name][method][shots].append(accuracy)
                    print(
                        f"{name} {method} k={shots} seed={seed}: {accuracy:.1f}%",
                        file=sys.stderr,
                        flush=True,
                    )
    # Mean over tasks of each seed's accuracy, then mean ± std over seeds.
    summary = {
        method: {
            shots: metrics.mean_std(
                [
                    sum(table[name][method][shots][i] for name in args.tasks) / len(args.tasks)
                    for i in range(len(args.seeds))
                ]
            )
            for shots in args.shots
        }
        for method in args.methods
    }
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    result = {
        "command": command,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "per_task": table,
        "mean_over_tasks": summary,
        "train_and_eval_seconds": {m: round(s, 1) for m, s in seconds.items()},
    }
    atomic_write_bytes(args.out / "results.json", (json.dumps(result, indent=2) + "\n").encode())
    plots.plot_data_efficiency(summary, args.out / "data_efficiency.png")
    lines = [
        f"# Data efficiency ({', '.join(args.tasks)})",
        "",
        f"Made by: `{command}`",
        "",
        "Accuracy % on each task's test split after learning it alone from k examples "
        "per class; mean over tasks, ± std over seeds.",
        "",
        "| method | " + " | ".join(f"k={k}" for k in args.shots) + " |",
        "|---|" + "---|" * len(args.shots),
    ]
    for method in args.methods:
        cells = [
            f"{summary[method][k]['mean']:.1f} ± {summary[method][k]['std']:.1f}"
            for k in args.shots
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Per task:", ""]
    for name in args.tasks:
        for method in args.methods:
            cells = [f"{sum(v) / len(v):.1f}" for v in table[name][method].values()]
            lines.append(
                f"- {name}, {method}: "
                + ", ".join(f"k={k}: {c}" for k, c in zip(args.shots, cells))
            )
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
