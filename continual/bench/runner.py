"""The benchmark runner: methods × task orders over a task sequence, scored from accuracy matrices.

For every order and method, tasks are learned one at a time; after each, the method labels the
test split of every task learned so far with no task id, giving R[i][j]. The summary metrics
(conventions in `continual.metrics`) are averaged over orders as mean and std. Results are
written after every (order, method), and trained prompts after every task, so ``resume``
continues an interrupted run.
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..backbone import Backbone
from ..data import Task
from ..errors import ContinualError
from ..files import atomic_write_bytes
from ..progress import say
from .config import BenchmarkConfig, shaping_of
from .memory import PeakMemory
from .methods import METHODS, Context, MethodSpec, TrainedPrompts
from .report import draw_plots, render_report
from .results import History, MethodRun, empty_matrix


def task_orders(tasks: Sequence[Task], count: int, seed: int) -> list[list[Task]]:
    """The given order first, then distinct seeded permutations."""
    if count < 1:
        raise ContinualError(f"--orders must be at least 1, got {count}")
    orders = [list(tasks)]
    rng = random.Random(seed)
    seen = {tuple(task.name for task in tasks)}
    limit = math.factorial(len(tasks))
    while len(orders) < min(count, limit):
        candidate = list(tasks)
        rng.shuffle(candidate)
        key = tuple(task.name for task in candidate)
        if key not in seen:
            seen.add(key)
            orders.append(candidate)
    return orders


def run_method(spec: MethodSpec, context: Context, order: list[Task]) -> MethodRun:
    """One method over one task order: its accuracy matrix (and routing matrix), and costs."""
    size = len(order)
    matrix = empty_matrix(size)
    routing = empty_matrix(size)
    routed = False
    confusion: dict[str, dict[str, int]] = {}
    with PeakMemory() as memory:
        method: Any = spec.build(context)
        if spec.joint:
            method.learn_all(order)
            rows = [size - 1]
        else:
            rows = list(range(size))
        for i in rows:
            if not spec.joint:
                method.learn(order[i])
            for j in range(i + 1):
                score = method.evaluate(order[j])
                matrix[i][j] = score.accuracy
                routing[i][j] = score.routing_accuracy
                routed = routed or score.routing_accuracy is not None
                if i == size - 1 and score.routed_to:
                    confusion[order[j].name] = {
                        name or "refused": count for name, count in score.routed_to.items()
                    }
    return MethodRun(
        method=spec.name,
        order=[task.name for task in order],
        matrix=matrix,
        routing=routing if routed else None,
        train_seconds=round(method.train_seconds, 2),
        peak_memory_mb=memory.megabytes,
        cost=method.cost(),
        final_only=spec.joint,
        routing_confusion=confusion or None,
    )


def run_benchmark(
    config: BenchmarkConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str = "",
) -> dict:
    """Run every method over every order, writing ``out/results.json`` as it goes."""
    from .sequences import load_sequence

    unknown = [method for method in config.methods if method not in METHODS]
    if unknown:
        raise ContinualError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    out.mkdir(parents=True, exist_ok=True)
    tasks = load_sequence(
        config.sequence,
        seed=config.seed,
        train_per_label=config.train_per_label,
        test_per_label=config.test_per_label,
        validation_per_label=config.validation_per_label,
    )
    for task in tasks:
        if not task.test:
            raise ContinualError(f"task {task.name!r} has no test examples to score")
    backbone = Backbone.load(
        config.backbone,
        max_length=config.max_length,
        query_layer=config.query_layer,
        device=config.device,
        dtype=config.dtype,
    )
    runs: list[MethodRun] = []
    results_path = out / "results.json"
    history = History(command=command)
    if resume and results_path.exists():
        try:
            previous = json.loads(results_path.read_text())
        except (OSError, ValueError) as error:
            raise ContinualError(
                f"{results_path}: cannot be read to resume ({error}); rerun without --resume"
            ) from None
        saved = previous.get("config") or {}
        if shaping_of(saved) != config.shaping_results():
            raise ContinualError(
                f"{results_path}: was made with another configuration; "
                "rerun without --resume or with the same options"
            )
        try:
            runs = [MethodRun.from_dict(run) for run in previous.get("runs", [])]
        except (TypeError, KeyError, ValueError) as error:
            raise ContinualError(
                f"{results_path}: its runs cannot be read ({error}); it was "
                "written by another version: rerun without --resume"
            ) from None
        # The first command made the results; later ones only continued them.
        history = History(
            command=previous.get("command", command),
            resumed_with=previous.get("resumed_with", []) + [command],
            wall_seconds=previous.get("wall_seconds") or 0.0,
        )
    done = {(run.method, tuple(run.order)) for run in runs}
    prompts = TrainedPrompts(
        backbone, config, progress=progress, cache=out / "cache" / "pool-entries", resume=resume
    )
    context = Context(backbone=backbone, config=config, progress=progress, prompts=prompts)
    orders = task_orders(tasks, config.orders, config.seed)
    started = time.perf_counter()
    for number, order in enumerate(orders):
        names = tuple(task.name for task in order)
        for name in config.methods:
            spec = METHODS[name]
            if spec.joint and number > 0:
                continue  # all tasks at once: the order does not matter
            if (name, names) in done:
                continue
            say(f"[order {number + 1}/{len(orders)}] {name}: {' → '.join(names)}", enabled=progress)
            runs.append(run_method(spec, context, order))
            _write_json(results_path, summarize(config, tasks, runs, history, started, False))
    summary = summarize(config, tasks, runs, history, started, True)
    _write_json(results_path, summary)
    atomic_write_bytes(out / "report.md", render_report(summary).encode("utf-8"))
    draw_plots(out)
    return summary


def summarize(
    config: BenchmarkConfig,
    tasks: Sequence[Task],
    runs: list[MethodRun],
    history: History,
    started: float,
    complete: bool,
) -> dict:
    """The results.json document: per-method summaries over orders, and every run."""
    methods: dict[str, dict] = {}
    for method in METHODS:
        mine = [run for run in runs if run.method == method]
        if not mine:
            continue
        scores = [_scores(run) for run in mine]
        methods[method] = {
            "accuracy_matrix": mine[0].matrix,
            "task_order": mine[0].order,
            "runs": [run.to_dict() for run in mine],
            **{
                key: metrics.mean_std([s[key] for s in scores])
                for key in ("average_accuracy", "forgetting", "bwt", "fwt", "routing_accuracy")
            },
            "trainable_parameters": mine[0].cost.trainable_parameters,
            "bytes_per_task": mine[0].cost.bytes_per_task,
            "train_seconds": metrics.mean_std([run.train_seconds for run in mine]),
            # A peak: the largest over orders (the pool trains its prompts in the first one).
            "peak_memory_mb": max(run.peak_memory_mb for run in mine),
        }
    return {
        "command": history.command,
        "resumed_with": history.resumed_with,
        "wall_seconds": round(history.wall_seconds + time.perf_counter() - started, 1),
        "config": config.to_dict(),
        "complete": complete,
        "tasks": [
            {
                "name": task.name,
                "labels": task.labels,
                "train": len(task.train),
                "validation": len(task.validation),
                "test": len(task.test),
            }
            for task in tasks
        ],
        "versions": _versions(),
        "units": "accuracy, forgetting, bwt and routing_accuracy in percent",
        "methods": methods,
        "runs": [run.to_dict() for run in runs],
    }


def _scores(run: MethodRun) -> dict[str, float | None]:
    if run.final_only:
        # Trained once on everything: only the final row exists.
        final = [value for value in run.matrix[-1] if value is not None]
        return {
            "average_accuracy": float(np.mean(final)),
            "forgetting": None,
            "bwt": None,
            "fwt": None,
            "routing_accuracy": None,
        }
    matrix = np.array([[np.nan if v is None else v for v in row] for row in run.matrix])
    summary = metrics.summarize(matrix)
    routing = None
    if run.routing:
        routing = float(np.mean([v for v in run.routing[-1] if v is not None]))
    return {**summary, "routing_accuracy": routing}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "avalanche-lib"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass  # a missing optional package is just not listed
    return versions


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
