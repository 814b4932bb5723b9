"""The method registry: every method the benchmark runs, by name, and how to build it.

A method learns tasks one at a time (`ContinualMethod`) or, for the joint upper bound, all at
once (`JointMethod`). Each registry entry (`MethodSpec`) names its method, says in one line what
it is, and builds it from the run's shared `Context`. The runner has no other knowledge of
methods: adding one is adding an entry here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..backbone import Backbone
from ..data import Task
from ..entry import TaskEntry
from ..files import atomic_write_bytes
from ..learner import TrainingConfig, train_task
from ..metrics import Score
from ..pool import PromptPool
from ..selector import DEFAULT_SELECTOR
from ..storage import read_entries, write_entries
from .config import BenchmarkConfig
from .results import Cost

if TYPE_CHECKING:  # the baselines import torch training code: only when a method is built
    from .baselines import ClassIncremental


class ContinualMethod(Protocol):
    """A continual learner the benchmark can drive."""

    train_seconds: float

    def learn(self, task: Task) -> None:
        """Learn one more task (only its data is available)."""

    def evaluate(self, task: Task) -> Score:
        """Accuracy (%) on ``task``'s test split with no task id (routing accuracy if routed)."""

    def cost(self) -> Cost:
        """Numbers trained, and bytes that must be stored per new task."""


class JointMethod(Protocol):
    """A method trained once on every task's data (an upper bound, not continual)."""

    train_seconds: float

    def learn_all(self, tasks: list[Task]) -> None:
        """Learn every task at once."""

    def evaluate(self, task: Task) -> Score: ...

    def cost(self) -> Cost: ...


class TrainedPrompts:
    """Each task's prompt and head, trained once and shared by every pool method and order.

    A task's prompt depends only on its own data and seed, never on the tasks before it, so the
    pool variants (which differ only in routing) and every task order reuse one training. With
    ``cache``, trained entries are written there after each task so that ``--resume`` reuses
    them; the cache is reused only for the very same configuration.
    """

    def __init__(
        self,
        backbone: Backbone,
        config: BenchmarkConfig,
        *,
        progress: bool,
        cache: Path | None = None,
        resume: bool = False,
    ) -> None:
        self.backbone = backbone
        self.config = config
        self.training = TrainingConfig(epochs=config.epochs, batch_size=config.batch_size)
        self.progress = progress
        self.cache = cache
        self.entries: dict[str, TaskEntry] = {}
        if cache is None:
            return
        stamp = json.dumps(config.shaping_results(), sort_keys=True)
        index = cache / "entries.json"
        if resume and index.exists():
            try:
                saved = json.loads(index.read_text())
            except (OSError, ValueError):
                saved = {}  # a damaged cache is ours to rebuild: train again
            if saved.get("config") == stamp:
                for entry in read_entries(cache, {"tasks": saved["tasks"]}):
                    self.entries[entry.name] = entry
                return
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)

    def train(self, task: Task) -> TaskEntry:
        """The task's trained entry (no selector state yet), training it on first use."""
        if task.name not in self.entries:
            self.entries[task.name] = train_task(
                self.backbone,
                task,
                self.config.prompt_length,
                self.training,
                seed=self.config.seed,
                progress=self.progress,
                placement=self.config.placement,
            )
            if self.cache is not None:
                records = write_entries(self.cache, list(self.entries.values()))
                index = {
                    "config": json.dumps(self.config.shaping_results(), sort_keys=True),
                    "tasks": records,
                }
                atomic_write_bytes(self.cache / "entries.json", json.dumps(index).encode())
        return self.entries[task.name]


@dataclass
class Context:
    """What every method of one run shares: backbone, settings and the trained prompts."""

    backbone: Backbone
    config: BenchmarkConfig
    progress: bool
    prompts: TrainedPrompts
    # A prompt's answer for a text does not depend on the other entries, so pool methods share
    # answers per (task, text) and only routing is recomputed as a pool grows.
    answers: dict[tuple[str, str], str | None] = field(default_factory=dict)


def routed_tasks(pool: PromptPool, texts: list[str], given: str | None) -> list[str | None]:
    """Each text's task: ``given`` (the oracle), else the one the pool routes it to (None:
    refused)."""
    if given is not None:
        return [given] * len(texts)
    index, _ = pool.route(texts)
    return [pool.tasks[i] if i >= 0 else None for i in index.tolist()]


class PoolMethod:
    """The prompt pool under one selector, replaying the shared trained prompts."""

    def __init__(self, context: Context, selector: str | None) -> None:
        self.context = context
        self.oracle = selector == "oracle"
        self.pool = PromptPool(
            context.backbone,
            prompt_length=context.config.prompt_length,
            placement=context.config.placement,
            selector=selector,
            training=context.prompts.training,
        )
        self.train_seconds = 0.0

    def learn(self, task: Task) -> None:
        trained = self.context.prompts.train(task)
        self.train_seconds += trained.stats["train_seconds"]
        self.pool.add_trained(task, trained, seed=self.context.config.seed)

    def evaluate(self, task: Task) -> Score:
        texts = [text for text, _ in task.test]
        names = routed_tasks(self.pool, texts, task.name if self.oracle else None)
        answers = self.context.answers
        missing = [
            (name, text)
            for name, text in zip(names, texts)
            if name is not None and (name, text) not in answers
        ]
        if missing:
            predicted = self.pool.predict(
                [text for _, text in missing], tasks=[name for name, _ in missing]
            )
            answers.update(zip(missing, (p.label for p in predicted)))
        correct = sum(
            name == task.name and answers[(task.name, text)] == gold
            for name, (text, gold) in zip(names, task.test)
        )
        routed_to: dict[str | None, int] = {}
        for name in names:
            routed_to[name] = routed_to.get(name, 0) + 1
        return Score(
            task=task.name,
            examples=len(texts),
            accuracy=100.0 * correct / len(texts),
            routing_accuracy=None
            if self.oracle
            else 100.0 * routed_to.get(task.name, 0) / len(texts),
            routed_to={} if self.oracle else routed_to,
        )

    def cost(self) -> Cost:
        return Cost(
            max(entry.trainable_parameters for entry in self.pool.entries),
            float(np.mean(self.pool.bytes_per_task())),
        )


def _run_settings(context: Context) -> dict[str, Any]:
    """What every trained baseline takes from the run: batch size, seed and progress."""
    return {
        "batch_size": context.config.batch_size,
        "seed": context.config.seed,
        "progress": context.progress,
    }


def _finetune(name: str) -> Callable[[Context], ClassIncremental]:
    """Full fine-tuning of a backbone copy: task after task, or (``joint``) all tasks at once."""

    def build(context: Context) -> ClassIncremental:
        from .baselines import ClassIncremental

        epochs = context.config.finetune_epochs
        return ClassIncremental(
            name, context.backbone, finetune=True, epochs=epochs, **_run_settings(context)
        )

    return build


def _seq_prompt(context: Context) -> ContinualMethod:
    from .baselines import ClassIncremental

    config = context.config
    return ClassIncremental(
        "seq-prompt",
        context.backbone,
        prompt_length=config.prompt_length,
        epochs=config.epochs,
        lr=0.03,
        **_run_settings(context),
    )


def _linear_probe(context: Context) -> ContinualMethod:
    from .baselines import ClassIncremental

    epochs = context.config.epochs * 4
    return ClassIncremental(
        "linear-probe", context.backbone, epochs=epochs, **_run_settings(context)
    )


def _hard_prompt(context: Context) -> ContinualMethod:
    from .hard_prompt import HardPrompt

    return HardPrompt(context.backbone)


def _avalanche(strategy: str) -> Callable[[Context], ContinualMethod]:
    def build(context: Context) -> ContinualMethod:
        from .avalanche_baselines import AvalancheMethod

        return AvalancheMethod(
            strategy,
            context.backbone,
            epochs=context.config.finetune_epochs,
            device=context.backbone.device,
            **_run_settings(context),
        )

    return build


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry.

    Attributes:
        name: how the method is named on the command line and in results.
        summary: one line saying what it is.
        build: makes a fresh method for one task order.
        joint: trained once on all tasks (only the final row of R is measured).
        language_model_only: needs a decoder LM (not run by default; asked for by name).
    """

    name: str
    summary: str
    build: Callable[[Context], ContinualMethod] | Callable[[Context], JointMethod]
    joint: bool = False
    language_model_only: bool = False


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "prompt-pool",
            f"the prompt pool, routed by the default {DEFAULT_SELECTOR!r} selector",
            lambda context: PoolMethod(context, None),
        ),
        MethodSpec(
            "prompt-pool-oracle",
            "the prompt pool with each input's task given (upper bound)",
            lambda context: PoolMethod(context, "oracle"),
        ),
        MethodSpec(
            "prompt-pool-prototypes",
            "the prompt pool routed by k-means prototypes (S-Prompts)",
            lambda context: PoolMethod(context, "prototypes"),
        ),
        MethodSpec(
            "prompt-pool-keys",
            "the prompt pool routed by learned keys (L2P)",
            lambda context: PoolMethod(context, "keys"),
        ),
        MethodSpec(
            "seq-finetune",
            "the whole backbone and a growing head, trained task after task",
            _finetune("seq-finetune"),
        ),
        MethodSpec(
            "seq-prompt", "one shared soft prompt and a growing head, backbone frozen", _seq_prompt
        ),
        MethodSpec("linear-probe", "frozen features and a growing linear head", _linear_probe),
        MethodSpec(
            "hard-prompt",
            "a written instruction and the label words scored by the LM's "
            "output embeddings, zero-shot (decoder LMs only)",
            _hard_prompt,
            language_model_only=True,
        ),
        MethodSpec(
            "joint",
            "full fine-tuning on all tasks at once (multitask upper bound)",
            _finetune("joint"),
            joint=True,
        ),
        MethodSpec("ewc", "Avalanche EWC on full fine-tuning", _avalanche("ewc")),
        MethodSpec("lwf", "Avalanche LwF on full fine-tuning", _avalanche("lwf")),
        MethodSpec(
            "replay", "Avalanche Replay (200 examples) on full fine-tuning", _avalanche("replay")
        ),
    )
}
