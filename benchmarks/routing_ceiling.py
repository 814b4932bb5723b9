"""Routing after every task of a sequence: the default selector's statistics against a joint
classifier on the same frozen features (the ceiling), and the dense covariance against the
diagonal plus low-rank one.

Each task's training texts are embedded once, as the pool embeds them (the default selector's
views and features). After each task t, every selector variant is fitted task by task on tasks
1..t and routes the test inputs of tasks 1..t (whole, and their first sentence); the ceiling is
a logistic regression fitted on all those tasks' features at once (not continual: it sees every
task's data together). With ``--run DIR...`` (``continual run`` result folders of the same
sequence) the plot also shows each method's average accuracy after every task. Writes
results.json, report.md and routing.png to --out.

    python benchmarks/routing_ceiling.py --sequence long12 --test-per-label 30 \
        --out results/long12/routing
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from continual.backbone import Backbone
from continual.bench.sequences import load_sequence
from continual.files import atomic_write_bytes
from continual.selector import DEFAULT_SELECTOR, build_selector, default_selector, first_sentence


def ceiling_routing(
    train: list[np.ndarray], test: list[np.ndarray], seed: int
) -> tuple[list[float], np.ndarray]:
    """Per-task routing % of a logistic regression fitted on all ``train`` tasks at once, and
    its confusion counts (true task x routed task)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features = np.concatenate(train)
    owner = np.concatenate([np.full(len(x), t) for t, x in enumerate(train)])
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(max_iter=2000, random_state=seed)
    model.fit(scaler.transform(features), owner)
    confusion = np.zeros((len(train), len(train)), dtype=int)
    shares = []
    for t, x in enumerate(test):
        routed = model.predict(scaler.transform(x))
        np.add.at(confusion[t], routed, 1)
        shares.append(100.0 * float(np.mean(routed == t)))
    return shares, confusion


def selector_routing(
    config: dict, train: list[torch.Tensor], test: list[torch.Tensor], seed: int
) -> tuple[list[float], np.ndarray, int]:
    """Per-task routing %, confusion counts and bytes per task of a selector fitted task by task."""
    selector = build_selector(config)
    states: list = []
    for queries in train:
        states.append(selector.fit_task(queries, states, seed=seed))
    confusion = np.zeros((len(train), len(train)), dtype=int)
    shares = []
    for t, queries in enumerate(test):
        routed, _ = selector.route(queries, states)
        np.add.at(confusion[t], routed.numpy(), 1)
        shares.append(100.0 * float((routed == t).float().mean()))
    size = sum(tensor.numel() * tensor.element_size() for tensor in states[0].values())
    return shares, confusion, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", default="long12")
    parser.add_argument(
        "--ranks",
        nargs="*",
        type=int,
        default=[],
        help="more variants: the default selector keeping this many directions per task",
    )
    parser.add_argument("--train-per-label", type=int, default=64)
    parser.add_argument("--test-per-label", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final-only", action="store_true", help="only after the last task")
    parser.add_argument(
        "--run", type=Path, nargs="*", default=[], help="`continual run` folders of the sequence"
    )
    parser.add_argument("--features", type=Path, help="cache the features in this file")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)

    started = time.perf_counter()
    backbone = Backbone.load(max_length=args.max_length)
    tasks = load_sequence(
        args.sequence,
        seed=args.seed,
        train_per_label=args.train_per_label,
        test_per_label=args.test_per_label,
        validation_per_label=16,
    )
    names = [task.name for task in tasks]
    if args.features and args.features.exists():
        train, tests = torch.load(args.features)  # our own cache of plain tensors
    else:
        view = build_selector(DEFAULT_SELECTOR)
        train = [
            backbone.query(view.training_texts([text for text, _ in task.train]), with_last=True)
            for task in tasks
        ]
        tests = {
            "whole": [backbone.query([t for t, _ in task.test], with_last=True) for task in tasks],
            "first_sentence": [
                backbone.query([first_sentence(t) for t, _ in task.test], with_last=True)
                for task in tasks
            ],
        }
        if args.features:
            torch.save((train, tests), args.features)
    say = f"features: {time.perf_counter() - started:.0f} s"
    print(say, file=sys.stderr, flush=True)

    # `before`: the default as it was, each task's dense covariance with shrinkage 0.3.
    variants = {
        "before": {"name": DEFAULT_SELECTOR, "rank": None, "shrinkage": 0.3},
        "default": default_selector("input"),
        **{str(rank): {**default_selector("input"), "rank": rank} for rank in args.ranks},
    }
    steps = [len(tasks)] if args.final_only else list(range(1, len(tasks) + 1))
    rows = []
    for step in steps:
        row: dict = {"tasks": step, "routing": {}, "per_task": {}}
        for input_view, test in tests.items():
            for variant, config in variants.items():
                shares, confusion, size = selector_routing(
                    config, train[:step], test[:step], args.seed
                )
                key = f"{variant}/{input_view}"
                row["routing"][key] = round(float(np.mean(shares)), 2)
                row["per_task"][key] = [round(s, 1) for s in shares]
                row.setdefault("bytes_per_task", {})[variant] = size
                if step == len(tasks):
                    row.setdefault("confusion", {})[key] = confusion.tolist()
            if input_view == "whole" and step > 1:
                shares, confusion = ceiling_routing(
                    [x.numpy() for x in train[:step]],
                    [x.numpy() for x in test[:step]],
                    args.seed,
                )
                row["routing"]["ceiling/whole"] = round(float(np.mean(shares)), 2)
                row["per_task"]["ceiling/whole"] = [round(s, 1) for s in shares]
                if step == len(tasks):
                    row.setdefault("confusion", {})["ceiling/whole"] = confusion.tolist()
        rows.append(row)
        print(json.dumps({"tasks": step, **row["routing"]}), flush=True)

    command = "python " + " ".join(shlex.quote(part) for part in sys.argv)
    run = None
    for folder in args.run:
        methods = json.loads((folder / "results.json").read_text())["methods"]
        run = {"methods": {**(run or {"methods": {}})["methods"], **methods}}
    result = {
        "command": command,
        "config": json.loads(json.dumps(vars(args), default=str)),
        "tasks": names,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "results.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out / "report.md", render(result, run).encode())
    if not args.final_only:
        plot(result, run, args.out / "routing.png")
    return 0


def _run_curves(run: dict | None) -> dict[str, dict[str, list[float | None]]]:
    """Per method of a `continual run`: average accuracy and routing % after each task."""
    curves: dict[str, dict[str, list[float | None]]] = {}
    for method, summary in (run or {}).get("methods", {}).items():
        matrix = summary["accuracy_matrix"]
        first = summary["runs"][0]
        routing = first.get("routing")
        curves[method] = {
            "average": [
                None if row[0] is None else float(np.mean([v for v in row if v is not None]))
                for row in matrix
            ],
            "routing": [
                float(np.mean([v for v in row if v is not None])) if row[0] is not None else None
                for row in routing
            ]
            if routing
            else [],
        }
    return curves


def render(result: dict, run: dict | None) -> str:
    rows, names = result["rows"], result["tasks"]
    keys = list(rows[-1]["routing"])
    lines = [
        f"# Routing after every task (`{result['config']['sequence']}`)",
        "",
        f"Made by: `{result['command']}` ({result['wall_seconds']:.0f} s)",
        "",
        "Routing % = share of each task's test inputs sent to that task, mean over the tasks "
        "learned so far. `before` is the default selector as it was (each task's dense "
        "covariance, shrinkage 0.3), `default` the default now (rank 190 int8 directions plus "
        "identity, shrinkage 0.34), a number the default at that rank; `whole` / "
        "`first_sentence` is the input given. `ceiling` is a logistic regression fitted on all "
        "tasks seen so far at once on the same features (not continual).",
        "",
        "| tasks | " + " | ".join(keys) + " | default − ceiling |",
        "|---|" + "---|" * (len(keys) + 1),
    ]
    default_key = "default/whole"
    for row in rows:
        routing = row["routing"]
        gap = (
            f"{routing[default_key] - routing['ceiling/whole']:+.1f}"
            if "ceiling/whole" in routing
            else "–"
        )
        cells = [f"{routing[key]:.1f}" if key in routing else "–" for key in keys]
        lines.append(f"| {row['tasks']} | " + " | ".join(cells) + f" | {gap} |")
    last = rows[-1]
    lines += ["", f"Bytes of selector statistics per task: {last['bytes_per_task']}.", ""]
    for key in (default_key, "ceiling/whole"):
        confusion = last.get("confusion", {}).get(key)
        if confusion is None:
            continue
        lines += [
            f"Routing confusion after the last task, `{key}` (rows: true task; columns: routed):",
            "",
            "| task | " + " | ".join(names[: len(confusion)]) + " |",
            "|---|" + "---|" * len(confusion),
        ]
        for name, counts in zip(names, confusion):
            lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + " |")
        lines.append("")
        pairs = sorted(
            (
                (confusion[i][j] + confusion[j][i], names[i], names[j])
                for i in range(len(confusion))
                for j in range(i + 1, len(confusion))
            ),
            reverse=True,
        )[:5]
        lines += [
            "Most confused pairs (inputs sent either way): "
            + ", ".join(f"{a} / {b} ({n})" for n, a, b in pairs if n),
            "",
        ]
    curves = _run_curves(run)
    if curves:
        lines += [
            "From the `continual run` results: average accuracy % after each task (routing % "
            "where routed).",
            "",
            "| method | " + " | ".join(str(i + 1) for i in range(len(names))) + " |",
            "|---|" + "---|" * len(names),
        ]
        for method, curve in curves.items():
            cells = []
            for i, value in enumerate(curve["average"]):
                routed = curve["routing"][i] if curve["routing"] else None
                text = "–" if value is None else f"{value:.1f}"
                cells.append(text + (f" ({routed:.1f})" if routed is not None else ""))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, run: dict | None, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["rows"]
    steps = [row["tasks"] for row in rows]
    figure = Figure(figsize=(12, 4.5))
    routing_axes, accuracy_axes = figure.subplots(1, 2)
    for key in rows[-1]["routing"]:
        values = [row["routing"].get(key) for row in rows]
        points = [(s, v) for s, v in zip(steps, values) if v is not None]
        style = "k--" if key.startswith("ceiling") else "-o"
        routing_axes.plot(*zip(*points), style, label=key, markersize=3)
    routing_axes.set(
        xlabel="tasks learned",
        ylabel="routing % (mean over tasks so far)",
        title="routing after each task",
    )
    routing_axes.legend(fontsize=7)
    for method, curve in _run_curves(run).items():
        points = [(s + 1, v) for s, v in enumerate(curve["average"]) if v is not None]
        if points:
            accuracy_axes.plot(*zip(*points), "-o", label=method, markersize=3)
    accuracy_axes.set(
        xlabel="tasks learned",
        ylabel="average accuracy % (tasks so far, no task id)",
        title="average accuracy after each task",
    )
    if run:
        accuracy_axes.legend(fontsize=7)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
