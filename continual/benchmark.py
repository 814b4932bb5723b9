"""The benchmark runner: methods × task orders over a task sequence, scored from accuracy matrices.

For every order and method, tasks are learned one at a time; after each, the method labels the
test split of every task learned so far with no task id, giving R[i][j]. The summary metrics
(conventions in `continual.metrics`) are averaged over orders as mean and std.

A task's prompt-pool entry depends only on that task's data and seed, never on the tasks before
it, so it is trained once and reused by the three pool variants and by every order; they differ
only in routing. Results are written after every (order, method) and the pool entries after every
task, so ``--resume`` continues an interrupted run.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import random
import shlex
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import metrics
from .backbone import Backbone
from .data import Task
from .errors import ContinualError
from .learner import TrainedTask, TrainingConfig, train_task
from .pool import PromptPool, TaskEntry
from .storage import atomic_write_bytes

POOL_METHODS = ("prompt-pool", "prompt-pool-oracle", "prompt-pool-prototypes",
                "prompt-pool-keys")
OTHER_METHODS = ("seq-finetune", "seq-prompt", "linear-probe", "joint", "ewc", "lwf", "replay")
ALL_METHODS = POOL_METHODS + OTHER_METHODS
SELECTOR_OF = {"prompt-pool": "gaussian", "prompt-pool-oracle": "oracle",
               "prompt-pool-prototypes": "prototypes", "prompt-pool-keys": "keys"}


@dataclass
class BenchmarkConfig:
    """Everything that defines a run; recorded in results.json."""

    sequence: str = "text4"
    methods: tuple[str, ...] = ALL_METHODS
    orders: int = 1
    seed: int = 0
    train_per_label: int | None = 64
    test_per_label: int | None = 50
    validation_per_label: int = 16
    max_length: int = 64
    query_layer: int | None = 3
    prompt_length: int = 16
    epochs: int = 4
    finetune_epochs: int = 2
    batch_size: int = 32

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in self.__dict__.items()}


# A first look in under 3 minutes on 2 CPU cores: small data, and the pool against the
# baselines that matter most (sequential fine-tuning, the probe, joint, the best Avalanche one).
QUICK = {"train_per_label": 20, "test_per_label": 20, "validation_per_label": 8, "epochs": 3,
         "finetune_epochs": 2, "orders": 1, "max_length": 48,
         "methods": POOL_METHODS + ("seq-finetune", "linear-probe", "joint", "replay")}


# -- running ---------------------------------------------------------------------------------------
@dataclass
class MethodRun:
    """One method on one order: its accuracy matrix and costs."""

    method: str
    order: list[str]
    matrix: list[list[float | None]]
    routing: list[list[float | None]] | None
    train_seconds: float
    peak_memory_mb: float
    trainable_parameters: int
    bytes_per_task: float
    extra: dict = field(default_factory=dict)


class PeakMemory:
    """Peak resident memory a method needs above what was live when it started.

    Freed memory is first handed back to the system (glibc ``malloc_trim``) so memory that an
    earlier method freed is not counted as this one's; then the resident size is sampled every
    20 ms. Linux only (elsewhere it reports 0).
    """

    def __init__(self) -> None:
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def resident() -> int:
        """Resident bytes of this process now (0 where /proc is missing)."""
        try:
            with open("/proc/self/statm") as file:
                return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def __enter__(self) -> "PeakMemory":
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = self.peak = self.resident()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.resident())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.resident())

    @property
    def megabytes(self) -> float:
        return round((self.peak - self.base) / 1e6, 1)


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


class PoolFamily:
    """Trains each task's prompt once and replays it under any selector and order."""

    def __init__(self, backbone: Backbone, config: BenchmarkConfig, cache: Path,
                 progress: bool, resume: bool) -> None:
        self.backbone = backbone
        self.config = config
        self.training = TrainingConfig(epochs=config.epochs, batch_size=config.batch_size)
        self.cache = cache
        self.progress = progress
        self.trained: dict[str, TrainedTask] = {}
        self.labels: dict[str, list[str]] = {}
        self.predictions: dict[tuple[str, str], str] = {}  # (task, text) → label
        key = json.dumps(_without_methods(config.to_dict()), sort_keys=True)
        stamp = cache / "config.json"
        # Reuse trained prompts only when resuming the very same configuration.
        if resume and stamp.exists() and stamp.read_text() == key:
            saved = PromptPool.load(cache, backbone)
            for entry in saved.entries:
                self.trained[entry.name] = TrainedTask(entry.prompt, entry.head_weight,
                                                       entry.head_bias, entry.stats)
                self.labels[entry.name] = entry.labels
        else:
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            atomic_write_bytes(stamp, key.encode())

    def train(self, task: Task) -> TrainedTask:
        if task.name not in self.trained:
            self.trained[task.name] = train_task(
                self.backbone, task, self.config.prompt_length, self.training,
                seed=self.config.seed, progress=self.progress,
            )
            self.labels[task.name] = list(task.labels)
            self._save_cache()
        return self.trained[task.name]

    def _save_cache(self) -> None:
        pool = PromptPool(self.backbone, prompt_length=self.config.prompt_length,
                          selector="oracle", training=self.training)
        for name, trained in self.trained.items():
            pool.add(TaskEntry(name, self.labels[name], trained.prompt, trained.head_weight,
                               trained.head_bias, stats=trained.stats))
        pool.save(self.cache)

    def run(self, method: str, order: list[Task]) -> MethodRun:
        selector = SELECTOR_OF[method]
        pool = PromptPool(self.backbone, prompt_length=self.config.prompt_length,
                          selector=selector, training=self.training)
        size = len(order)
        matrix = _empty(size)
        routing = None if selector == "oracle" else _empty(size)
        seconds = 0.0
        confusion = {task.name: {} for task in order}  # own task → routed task → count
        with PeakMemory() as memory:
            for i, task in enumerate(order):
                trained = self.train(task)
                seconds += trained.stats["train_seconds"]
                pool.add_trained(task, trained, seed=self.config.seed)
                for j in range(i + 1):
                    accuracy, routed, names = self.evaluate(pool, order[j],
                                                            oracle=routing is None)
                    matrix[i][j] = accuracy
                    if routing is not None:
                        routing[i][j] = routed
                    if i == size - 1:
                        confusion[order[j].name] = dict(Counter(name or "refused"
                                                                for name in names))
        sizes = pool.bytes_per_task()
        return MethodRun(
            method=method, order=[task.name for task in order], matrix=matrix, routing=routing,
            train_seconds=round(seconds, 2), peak_memory_mb=memory.megabytes,
            trainable_parameters=max(entry.trainable_parameters for entry in pool.entries),
            bytes_per_task=float(np.mean(sizes)),
            extra={} if routing is None else {"routing_confusion": confusion},
        )

    def evaluate(self, pool: PromptPool, task: Task,
                 oracle: bool) -> tuple[float, float, list[str | None]]:
        """Accuracy, routing accuracy and routed task names of ``pool`` on ``task``'s test split.

        A prompt's answer for a text does not depend on the other entries, so answers are
        cached per (task, text) and routing alone is recomputed as the pool grows.
        """
        texts = [text for text, _ in task.test]
        if oracle:
            names = [task.name] * len(texts)
        else:
            index, _ = pool.route(texts)
            names = [pool.tasks[i] if i >= 0 else None for i in index.tolist()]
        missing = [(name, text) for name, text in zip(names, texts)
                   if name is not None and (name, text) not in self.predictions]
        if missing:
            answers = pool.predict([text for _, text in missing],
                                   tasks=[name for name, _ in missing])
            for key, answer in zip(missing, answers):
                self.predictions[key] = answer.label
        correct = sum(name == task.name and self.predictions[(name, text)] == gold
                      for name, (text, gold) in zip(names, task.test))
        routed = sum(name == task.name for name in names)
        return 100.0 * correct / len(texts), 100.0 * routed / len(texts), names


def _empty(size: int) -> list[list[float | None]]:
    return [[None] * size for _ in range(size)]


def run_sequential(method_name: str, build: Callable[[], object], order: list[Task]) -> MethodRun:
    """Drive a `Method` (baselines, Avalanche strategies) over one order."""
    size = len(order)
    matrix = _empty(size)
    seconds = 0.0
    with PeakMemory() as memory:
        method = build()
        for i, task in enumerate(order):
            start = time.perf_counter()
            method.learn(task)
            seconds += time.perf_counter() - start
            for j in range(i + 1):
                matrix[i][j] = method.evaluate(order[j])[0]
    cost = method.cost()
    return MethodRun(method=method_name, order=[task.name for task in order], matrix=matrix,
                     routing=None, train_seconds=round(seconds, 2),
                     peak_memory_mb=memory.megabytes,
                     trainable_parameters=int(cost["trainable_parameters"]),
                     bytes_per_task=float(cost["bytes_per_task"]))


def run_joint(backbone: Backbone, config: BenchmarkConfig, order: list[Task],
              progress: bool) -> MethodRun:
    """The multitask upper bound: all tasks at once; only the last row of R is defined."""
    from .baselines import ClassIncremental, joint_training

    size = len(order)
    matrix = _empty(size)
    with PeakMemory() as memory:
        method = ClassIncremental("joint", backbone, finetune=True, epochs=config.finetune_epochs,
                                  batch_size=config.batch_size, seed=config.seed,
                                  progress=progress)
        joint_training(method, order)
        for j, task in enumerate(order):
            matrix[size - 1][j] = method.evaluate(task)[0]
    cost = method.cost()
    return MethodRun(method="joint", order=[task.name for task in order], matrix=matrix,
                     routing=None, train_seconds=round(method.train_seconds, 2),
                     peak_memory_mb=memory.megabytes,
                     trainable_parameters=int(cost["trainable_parameters"]),
                     bytes_per_task=float(cost["bytes_per_task"]))


def baseline_builder(method: str, backbone: Backbone, config: BenchmarkConfig,
                     progress: bool) -> Callable[[], object]:
    from .baselines import ClassIncremental

    common = {"batch_size": config.batch_size, "seed": config.seed, "progress": progress}
    if method == "seq-finetune":
        return lambda: ClassIncremental(method, backbone, finetune=True,
                                        epochs=config.finetune_epochs, **common)
    if method == "seq-prompt":
        return lambda: ClassIncremental(method, backbone, prompt_length=config.prompt_length,
                                        epochs=config.epochs, lr=0.03, **common)
    if method == "linear-probe":
        return lambda: ClassIncremental(method, backbone, epochs=config.epochs * 4, **common)
    if method in ("ewc", "lwf", "replay"):
        from .integrations.avalanche import AvalancheMethod

        return lambda: AvalancheMethod(method, backbone, epochs=config.finetune_epochs,
                                       batch_size=config.batch_size, seed=config.seed,
                                       progress=progress)
    raise ContinualError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")


def run_benchmark(config: BenchmarkConfig, out: Path, *, resume: bool = False,
                  progress: bool = True, command: str = "") -> dict:
    """Run every method over every order, writing ``out/results.json`` as it goes."""
    from .corpora import load_sequence

    unknown = [method for method in config.methods if method not in ALL_METHODS]
    if unknown:
        raise ContinualError(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    out.mkdir(parents=True, exist_ok=True)
    tasks = load_sequence(config.sequence, seed=config.seed,
                          train_per_label=config.train_per_label,
                          test_per_label=config.test_per_label,
                          validation_per_label=config.validation_per_label)
    for task in tasks:
        if not task.test:
            raise ContinualError(f"task {task.name!r} has no test examples to score")
    backbone = Backbone.load(max_length=config.max_length, query_layer=config.query_layer)
    runs: list[dict] = []
    results_path = out / "results.json"
    history = {"command": command, "resumed_with": [], "wall_seconds": 0.0}
    if resume and results_path.exists():
        previous = json.loads(results_path.read_text())
        if _without_methods(previous.get("config")) != _without_methods(config.to_dict()):
            raise ContinualError(f"{results_path}: was made with another configuration; "
                                 "rerun without --resume or with the same options")
        runs = previous.get("runs", [])
        # The first command made the results; later ones only continued them.
        history = {"command": previous.get("command", command),
                   "resumed_with": previous.get("resumed_with", []) + [command],
                   "wall_seconds": previous.get("wall_seconds") or 0.0}
    done = {(run["method"], tuple(run["order"])) for run in runs}
    family = PoolFamily(backbone, config, out / "cache" / "pool-entries", progress, resume)
    orders = task_orders(tasks, config.orders, config.seed)
    started = time.perf_counter()
    for number, order in enumerate(orders):
        names = tuple(task.name for task in order)
        for method in config.methods:
            if method == "joint" and number > 0:
                continue  # all tasks at once: the order does not matter
            if (method, names) in done:
                continue
            _say(progress, f"[order {number + 1}/{len(orders)}] {method}: {' → '.join(names)}")
            if method in POOL_METHODS:
                result = family.run(method, order)
            elif method == "joint":
                result = run_joint(backbone, config, order, progress)
            else:
                build = baseline_builder(method, backbone, config, progress)
                result = run_sequential(method, build, order)
            runs.append(result.__dict__)
            _write_json(results_path, _assemble(config, tasks, runs, history, started, False))
    summary = _assemble(config, tasks, runs, history, started, True)
    _write_json(results_path, summary)
    atomic_write_bytes(out / "report.md", render_report(summary).encode("utf-8"))
    draw_plots(out)
    return summary


def _without_methods(config: dict | None) -> dict | None:
    # Methods may be added to a finished run: only the settings that shape results must match.
    return None if config is None else {k: v for k, v in config.items() if k != "methods"}


def _assemble(config: BenchmarkConfig, tasks: Sequence[Task], runs: list[dict], history: dict,
              started: float, complete: bool) -> dict:
    methods: dict[str, dict] = {}
    for method in ALL_METHODS:
        mine = [run for run in runs if run["method"] == method]
        if not mine:
            continue
        scores = [_scores(run) for run in mine]
        methods[method] = {
            "accuracy_matrix": mine[0]["matrix"],
            "task_order": mine[0]["order"],
            "runs": mine,
            **{key: metrics.mean_std([s[key] for s in scores])
               for key in ("average_accuracy", "forgetting", "bwt", "fwt", "routing_accuracy")},
            "trainable_parameters": mine[0]["trainable_parameters"],
            "bytes_per_task": mine[0]["bytes_per_task"],
            "train_seconds": metrics.mean_std([run["train_seconds"] for run in mine]),
            # A peak: the largest over orders (the pool trains its prompts in the first one).
            "peak_memory_mb": max(run["peak_memory_mb"] for run in mine),
        }
    return {
        "command": history["command"],
        "resumed_with": history["resumed_with"],
        "wall_seconds": round(history["wall_seconds"] + time.perf_counter() - started, 1),
        "config": config.to_dict(),
        "complete": complete,
        "tasks": [{"name": task.name, "labels": task.labels, "train": len(task.train),
                   "validation": len(task.validation), "test": len(task.test)} for task in tasks],
        "versions": _versions(),
        "units": "accuracy, forgetting, bwt and routing_accuracy in percent",
        "methods": methods,
        "runs": runs,
    }


def _scores(run: dict) -> dict:
    matrix = np.array([[np.nan if v is None else v for v in row] for row in run["matrix"]])
    if np.isnan(np.diag(matrix)[:-1]).any():
        # joint: trained once on everything, so only the final row exists.
        final = matrix[-1]
        return {"average_accuracy": float(np.mean(final)), "forgetting": None, "bwt": None,
                "fwt": None, "routing_accuracy": None}
    summary = metrics.summarize(matrix)
    routing = None
    if run.get("routing"):
        routing = float(np.mean([v for v in run["routing"][-1] if v is not None]))
    return {**summary, "routing_accuracy": routing}


def _versions() -> dict:
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    try:
        from importlib.metadata import version

        versions["avalanche-lib"] = version("avalanche-lib")
    except Exception:  # noqa: BLE001 - a missing optional package is just not listed
        pass
    return versions


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# -- reporting -------------------------------------------------------------------------------------
def _cell(entry: dict | None, digits: int = 1) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def render_report(summary: dict) -> str:
    """Markdown: the methods × metrics table, costs, settings and conventions."""
    config = summary["config"]
    lines = [
        f"# Benchmark `{config['sequence']}`",
        "",
        f"Made by: `{summary['command']}`"
        + "".join(f", continued by `{c}`" for c in summary.get("resumed_with", [])),
        "",
        f"{config['orders']} task order(s), seed {config['seed']}; tasks: "
        + ", ".join(f"{t['name']} ({len(t['labels'])} labels, {t['train']} train / "
                    f"{t['test']} test)" for t in summary["tasks"]) + ".",
        "Every method is scored with no task id (except `prompt-pool-oracle`): an input counts "
        "only if the method picks its task's right label among all labels seen so far.",
        "",
        "| method | avg accuracy % | forgetting | BWT | routing % | trainable params | "
        "stored per task | train s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary["methods"].items():
        lines.append(
            f"| {name} | {_cell(entry['average_accuracy'])} | {_cell(entry['forgetting'])} | "
            f"{_cell(entry['bwt'])} | {_cell(entry['routing_accuracy'])} | "
            f"{entry['trainable_parameters']:,} | {metrics.format_bytes(entry['bytes_per_task'])}"
            f" | {_cell(entry['train_seconds'], 0)} | {entry['peak_memory_mb']:.0f} |"
        )
    lines += [
        "",
        "Values are mean ± std over task orders. Conventions (R[i][j]: accuracy on task j after "
        "learning task i): average accuracy A = mean_j R[T][j]; forgetting F = mean over j<T of "
        "max_{l<T} R[l][j] − R[T][j] (positive = forgotten); BWT = mean over j<T of "
        "R[T][j] − R[j][j]. FWT is not reported: in this task-agnostic setting no method can "
        "name a task's labels before learning it, so R[j−1][j] is 0 for all.",
        "Routing %: for each task, the share of its final test inputs sent to its own "
        "prompt; averaged over tasks.",
        "Stored per task: bytes a new task adds (the pool: prompt, head and the selector's "
        "statistics, of which the Gaussian selector's covariance is most; full fine-tuning: a "
        "whole model copy). Trainable params: prompt and head for the pool. The prompt-pool "
        "rows share the same trained prompts (a task's prompt does not depend on earlier "
        "tasks); they differ only in routing, so their train seconds are one training, shown "
        "once per row.",
        "Peak MB: the process's peak resident memory while the method ran, above what was "
        "live when it started (Python, torch, the frozen backbone and the data not counted); "
        "the largest over orders.",
        "Timings on a shared machine: compare ratios within this run, not absolute seconds.",
        "",
    ]
    pool = summary["methods"].get("prompt-pool")
    confusion = pool and pool["runs"][0].get("extra", {}).get("routing_confusion")
    if confusion:
        names = list(confusion)
        lines += [
            "",
            "Where `prompt-pool` sent each task's final test inputs (rows: true task; columns: "
            "routed task; first order):",
            "",
            "| task | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        lines += [f"| {row} | " + " | ".join(str(confusion[row].get(col, 0)) for col in names)
                  + " |" for row in names]
    lines += [
        "",
        f"Versions: {json.dumps(summary.get('versions', {}))}. "
        f"Wall time: {summary.get('wall_seconds', '?')} s.",
    ]
    return "\n".join(lines) + "\n"


def draw_plots(directory: str | Path) -> list[Path]:
    """Draw the forgetting plot, heatmaps, accuracy vs forgetting and cost from results.json."""
    from . import plots

    directory = Path(directory)
    path = directory / "results.json"
    try:
        summary = json.loads(path.read_text())
        methods = summary["methods"]
    except (OSError, ValueError, KeyError) as error:
        raise ContinualError(f"{path}: not a benchmark result ({error})") from None
    sequential = {name: entry for name, entry in methods.items() if name != "joint"}
    first = next(iter(sequential.values()), None) or next(iter(methods.values()))
    names = first["task_order"]
    # Matrices of the first order, whose task order all methods share.
    matrices = {name: entry["accuracy_matrix"] for name, entry in sequential.items()
                if entry["task_order"] == names}
    written = [
        plots.plot_forgetting(names, matrices, directory / "forgetting.png"),
        plots.plot_accuracy_heatmaps(names, matrices, directory / "accuracy_matrices.png"),
        plots.plot_accuracy_vs_forgetting(
            {name: {"average_accuracy": entry["average_accuracy"],
                    "forgetting": entry["forgetting"]} for name, entry in methods.items()},
            directory / "accuracy_vs_forgetting.png"),
        plots.plot_cost(
            {name: {"bytes_per_task": entry["bytes_per_task"],
                    "train_seconds": entry["train_seconds"]["mean"],
                    "trainable_parameters": entry["trainable_parameters"]}
             for name, entry in methods.items()},
            directory / "cost.png"),
    ]
    return written


# -- command line ------------------------------------------------------------------------------------
def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sequence", default="text4", help="text4, or a TOML file of tasks")
    parser.add_argument("--methods", nargs="+",
                        help=f"any of: {' '.join(ALL_METHODS)} (default: all; with --quick, "
                             f"{' '.join(QUICK['methods'])})")
    parser.add_argument("--out", type=Path, help="result folder (default results/<sequence>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--orders", type=int, help="task orders to average over (default 1)")
    parser.add_argument("--train-per-label", type=int)
    parser.add_argument("--test-per-label", type=int)
    parser.add_argument("--epochs", type=int, help="prompt-tuning epochs at most")
    parser.add_argument("--finetune-epochs", type=int, help="full fine-tuning epochs")
    parser.add_argument("--quick", action="store_true",
                        help="small data, one order: a few minutes on a laptop CPU")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out with the same options")
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    config = BenchmarkConfig(sequence=args.sequence, seed=args.seed)
    if args.quick:
        for key, value in QUICK.items():
            setattr(config, key, value)
    if args.methods:
        config.methods = tuple(args.methods)
    for key in ("orders", "train_per_label", "test_per_label", "epochs", "finetune_epochs"):
        value = getattr(args, key)
        if value is not None:
            setattr(config, key, value)
    return config


def run_from_args(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    stem = Path(config.sequence).stem if config.sequence.endswith(".toml") else config.sequence
    out = args.out or Path("results") / (stem + ("-quick" if args.quick else ""))
    command = "continual " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    summary = run_benchmark(config, out, resume=args.resume, progress=not args.no_progress,
                            command=command.strip())
    print(render_report(summary))
    print(f"results in {out}/ (results.json, report.md, *.png)", file=sys.stderr)
    return 0
