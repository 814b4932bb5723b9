"""The generative benchmark: every method over one text-to-text task sequence, on one frozen LM.

Tasks are learned one at a time; after each, the method answers the test split of every task
learned so far, giving R[i][j] in the task's metric (points). Each method's run is written to
``out/runs/<method>.json`` as soon as it ends, so two processes may run different methods into
the same folder at once; ``results.json``, ``report.md`` and the plots are rebuilt from every
run file of the same configuration after each method.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..backbone import Backbone
from ..errors import ContinualError
from ..files import atomic_write_bytes, sha256_file
from ..progress import say
from .generative_corpora import GenerativeTask, Sizes, load_generative_sequence
from .generative_methods import (
    FineTuned,
    GenerativeConfig,
    GenerativeContext,
    GenerativeMethod,
    SharedPrompt,
    WrittenPrompt,
)
from .memory import PeakMemory
from .results import empty_matrix
from .runner import _versions


def quick_generative(config: GenerativeConfig) -> GenerativeConfig:
    """``config`` at the quick preset's sizes: a few minutes for every method."""
    return replace(
        config,
        sizes=Sizes(train=24, validation=4, test=8),
        settings=replace(config.settings, epochs=1, max_input_tokens=24, shots=1),
    )


@dataclass(frozen=True)
class GenerativeSpec:
    """One registry entry: the method's name, one line saying what it is, how to build it."""

    name: str
    summary: str
    build: Callable[[GenerativeContext], GenerativeMethod]


def _pool(oracle: bool) -> Callable[[GenerativeContext], GenerativeMethod]:
    def build(context: GenerativeContext) -> GenerativeMethod:
        from .generative_pool import PoolMethod

        return PoolMethod(context, oracle=oracle)

    return build


GENERATIVE_METHODS: dict[str, GenerativeSpec] = {
    spec.name: spec
    for spec in (
        GenerativeSpec(
            "prompt-pool",
            "the prompt pool: a soft prompt per task, each input routed by the default selector",
            _pool(oracle=False),
        ),
        GenerativeSpec(
            "prompt-pool-oracle",
            "the prompt pool with each input's task given",
            _pool(oracle=True),
        ),
        GenerativeSpec(
            "zero-shot",
            "the task's written instruction in the chat template (task given, no training)",
            lambda c: WrittenPrompt(c.backbone, c.config.settings, c.progress, shots=0),
        ),
        GenerativeSpec(
            "k-shot",
            "the instruction with k worked examples from the training split (task given)",
            lambda c: WrittenPrompt(
                c.backbone, c.config.settings, c.progress, c.config.settings.shots
            ),
        ),
        GenerativeSpec(
            "seq-prompt",
            "one shared soft prompt trained on each task in turn (no task id)",
            lambda c: SharedPrompt(c.backbone, c.config.settings, c.progress),
        ),
        GenerativeSpec(
            "seq-finetune",
            "the whole language model fine-tuned on each task in turn",
            lambda c: FineTuned(c.backbone, c.config.settings, c.progress, joint=False),
        ),
        GenerativeSpec(
            "joint-finetune",
            "the whole language model fine-tuned on all tasks at once (multitask upper bound)",
            lambda c: FineTuned(c.backbone, c.config.settings, c.progress, joint=True),
        ),
    )
}


def clip_inputs(backbone: Backbone, tasks: list[GenerativeTask], max_tokens: int) -> None:
    """Cut every input to its first ``max_tokens`` tokens, once, so that every method (the pool
    included, whatever its own limit) sees the same text."""
    for task in tasks:
        for split in ("train", "validation", "test"):
            pairs = getattr(task, split)
            ids = backbone.tokenizer([text for text, _ in pairs], add_special_tokens=False)
            clipped = [
                (backbone.tokenizer.decode(tokens[:max_tokens]).strip(), target)
                for tokens, (_, target) in zip(ids["input_ids"], pairs, strict=True)
            ]
            setattr(task, split, clipped)


def run_one(spec: GenerativeSpec, context: GenerativeContext, order: list[GenerativeTask]) -> dict:
    """One method over the task order: its R matrix (and routing), costs and speeds."""
    size = len(order)
    matrix, routing, lenient = empty_matrix(size), empty_matrix(size), empty_matrix(size)
    confusion: dict[str, dict[str, int]] = {}
    with PeakMemory() as memory:
        method = spec.build(context)
        if method.joint:
            method.learn_all(order)
        for i in [size - 1] if method.joint else range(size):
            if not method.joint:
                method.learn(order[i])
            for j in range(i + 1):
                score = method.evaluate(order[j])
                matrix[i][j], routing[i][j], lenient[i][j] = (
                    score.metric,
                    score.routing,
                    score.lenient,
                )
                if i == size - 1 and score.routed_to:
                    confusion[order[j].name] = {
                        name or "refused": count for name, count in score.routed_to.items()
                    }
    cost = method.cost()
    return {
        "method": spec.name,
        "order": [task.name for task in order],
        "metrics": [task.metric for task in order],
        "matrix": matrix,
        "routing": routing if any(v is not None for row in routing for v in row) else None,
        "lenient_exact_match": lenient,
        "final_only": method.joint,
        "train_seconds": round(method.train_seconds, 2),
        "generate_seconds": round(method.generate_seconds, 2),
        "generated_tokens": method.generated_tokens,
        "tokens_per_second": round(method.generated_tokens / method.generate_seconds, 2)
        if method.generate_seconds
        else None,
        "peak_memory_mb": memory.megabytes,
        "trainable_parameters": cost.trainable_parameters,
        "bytes_per_task": cost.bytes_per_task,
        "routing_confusion": confusion or None,
    }


def run_generative(
    config: GenerativeConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str = "",
) -> dict:
    """Run the configured methods into ``out`` and rebuild the summary from all run files."""
    unknown = [name for name in config.methods if name not in GENERATIVE_METHODS]
    if unknown:
        raise ContinualError(
            f"unknown method(s) {unknown} for a generative sequence; choose from "
            f"{', '.join(GENERATIVE_METHODS)}"
        )
    started = time.perf_counter()
    tasks = load_generative_sequence(config.sequence, config.sizes, config.settings.seed)
    from .packaged_lm import smollm2_gguf

    backbone = config.backbone or str(smollm2_gguf())
    say(f"loading {backbone}", enabled=progress)
    # Room for a clipped input re-tokenized: every method then reads it whole.
    model_backbone = Backbone.load(backbone, max_length=2 * config.settings.max_input_tokens)
    clip_inputs(model_backbone, tasks, config.settings.max_input_tokens)
    model = {
        "name": backbone,
        "sha256": sha256_file(backbone) if Path(backbone).is_file() else None,
    }
    stamp = config.shaping()
    described = [
        {
            "name": task.name,
            "metric": task.metric,
            "source": task.source,
            "train": len(task.train),
            "validation": len(task.validation),
            "test": len(task.test),
        }
        for task in tasks
    ]
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    context = GenerativeContext(model_backbone, config, progress)
    for name in config.methods:
        path = runs_dir / f"{name}.json"
        if resume and _read_run(path, stamp) is not None:
            continue
        say(f"{name}: {' → '.join(task.name for task in tasks)}", enabled=progress)
        run_started = time.perf_counter()
        run = run_one(GENERATIVE_METHODS[name], context, tasks)
        run["wall_seconds"] = round(time.perf_counter() - run_started, 1)
        document = {"config": stamp, "command": command, "model": model, "run": run}
        atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())
        write_summary(out, stamp, described, model)
    summary = write_summary(out, stamp, described, model)
    say(f"done in {time.perf_counter() - started:.0f} s", enabled=progress)
    return summary


def _read_run(path: Path, stamp: dict) -> dict | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if document.get("config") == stamp else None


def rebuild_summary(out: Path) -> dict:
    """results.json, report.md and the plots again from the run files in ``out`` (after the
    report's code changed, or to merge runs made by several processes)."""
    path = out / "results.json"
    try:
        summary = json.loads(path.read_text())
        return write_summary(out, summary["config"], summary["tasks"], summary["model"])
    except (OSError, ValueError, KeyError) as error:
        raise ContinualError(f"{path}: not a generative benchmark result ({error})") from None


def write_summary(out: Path, stamp: dict, tasks: list[dict], model: dict) -> dict:
    """results.json, report.md and the plots from every run file made with this configuration
    (``tasks``: each task's name, metric, source and split sizes)."""
    from .generative_report import render_generative_report
    from .report import draw_plots

    documents = [
        document
        for path in sorted((out / "runs").glob("*.json"))
        if (document := _read_run(path, stamp)) is not None
    ]
    by_name = {document["run"]["method"]: document for document in documents}
    methods: dict[str, dict] = {}
    for name in GENERATIVE_METHODS:  # registry order
        if name in by_name:
            methods[name] = _method_summary(by_name[name]["run"])
    summary = {
        "commands": sorted({document["command"] for document in documents}),
        "config": stamp,
        "model": model,
        "tasks": tasks,
        "versions": _versions(),
        "units": "task metrics (exact match, ROUGE-L F) in points 0-100; routing in percent",
        "measure": "task metric (points)",
        "methods": methods,
    }
    atomic_write_bytes(out / "results.json", (json.dumps(summary, indent=2) + "\n").encode())
    atomic_write_bytes(out / "report.md", render_generative_report(summary).encode("utf-8"))
    if methods:
        draw_plots(out)
    return summary


def _method_summary(run: dict) -> dict:
    """One method's entry in the shape `report.draw_plots` reads (one order: std 0)."""
    matrix = run["matrix"]
    if run["final_only"]:
        final = [value for value in matrix[-1] if value is not None]
        scores: dict[str, float | None] = {
            "average_accuracy": float(np.mean(final)),
            "forgetting": None,
            "bwt": None,
        }
    else:
        array = np.array([[np.nan if v is None else v for v in row] for row in matrix])
        scores = {
            "average_accuracy": metrics.average_accuracy(array),
            "forgetting": metrics.forgetting(array),
            "bwt": metrics.backward_transfer(array),
        }
    routing = run["routing"]
    return {
        "accuracy_matrix": matrix,
        "task_order": run["order"],
        "runs": [run],
        **{key: metrics.mean_std([value]) for key, value in scores.items()},
        "routing_accuracy": metrics.mean_std(
            [float(np.mean([v for v in routing[-1] if v is not None]))] if routing else []
        ),
        "trainable_parameters": run["trainable_parameters"],
        "bytes_per_task": run["bytes_per_task"],
        "train_seconds": metrics.mean_std([run["train_seconds"]]),
        "tokens_per_second": run["tokens_per_second"],
        "peak_memory_mb": run["peak_memory_mb"],
    }


def generative_config_from_args(args: Any) -> GenerativeConfig:
    """The run's configuration from ``continual run`` options on a generative sequence."""
    unsupported = [
        option
        for option, value in (
            ("--orders", args.orders),
            ("--finetune-epochs", args.finetune_epochs),
            ("--query-layer", args.query_layer),
            ("--placement", args.placement),
        )
        if value is not None
    ]
    if args.device != "cpu" or args.dtype != "float32":
        unsupported.append("--device/--dtype")
    if unsupported:
        raise ContinualError(
            f"{', '.join(unsupported)}: not available for the generative sequence "
            f"{args.sequence!r} (one order, float32 on the CPU; --epochs sets every method's)"
        )
    config = GenerativeConfig(
        sequence=args.sequence, methods=tuple(GENERATIVE_METHODS), backbone=args.backbone
    )
    if args.quick:
        config = quick_generative(config)
    settings = replace(config.settings, seed=args.seed)
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    if args.max_length is not None:
        settings = replace(settings, max_input_tokens=args.max_length)
    sizes = config.sizes
    if args.train_per_label is not None:
        sizes = replace(sizes, train=args.train_per_label)
    if args.test_per_label is not None:
        sizes = replace(sizes, test=args.test_per_label)
    return replace(
        config,
        settings=settings,
        sizes=sizes,
        methods=tuple(args.methods) if args.methods else config.methods,
    )
