"""Learning one task: a new soft prompt and head over the frozen backbone, or a prompt alone
before the language model for a text-to-text task (`train_text_task`).

Only the new prompt and head receive gradients; the backbone and every earlier task are out of
reach of the optimizer. `train_task` runs the shared loop (`continual.trainer.Trainer`: seeded,
early stopping on the validation split, progress, data-parallel under torchrun or Accelerate)
with `continual.classifier.ClassifierSteps`: the prompted pass's logits, cross-entropy,
accuracy.
`new_classifier`, `param_groups`, `entry_stats` and `classifier_entry` are the parts the
Avalanche strategy shares, so that an entry made there is made as here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from . import distributed
from .backbone import Backbone
from .classifier import ClassifierSteps, PromptedClassifier
from .data import Generation, Task
from .entry import TaskEntry
from .errors import ContinualError
from .generate import default_max_new_tokens
from .placement import Placement
from .prompt import LowerStates, PromptInit, SoftPrompt
from .text_training import PromptedLanguageModel, TextToTextSteps
from .trainer import (
    Hook,
    ProgressHook,
    Trainer,
    TrainingResult,
    check_seed,
    trainable_parameters,
)


@dataclass
class TrainingConfig:
    """How one task's prompt and head are trained.

    Attributes:
        epochs: passes over the training split at most.
        batch_size: examples per step.
        prompt_lr: Adam learning rate of the prompt vectors (prompts want a large one).
        head_lr: Adam learning rate of the linear head.
        patience: epochs without validation improvement before stopping (0: never stop early).
        prompt_init: ``vocab``, ``random`` or ``text``.
        prompt_text: the text for ``text`` init, e.g. "Classify the topic of this article".
        head: ``linear`` (trained) or ``verbalizer``: each label word's output embedding in
            the language model, left untrained (`continual.verbalizer`; decoders only).
    """

    epochs: int = 6
    batch_size: int = 32
    prompt_lr: float = 0.03
    head_lr: float = 0.01
    patience: int = 2
    prompt_init: PromptInit = "vocab"
    prompt_text: str | None = None
    head: Literal["linear", "verbalizer"] = "linear"

    def __post_init__(self) -> None:
        # A manifest or a caller may give any value: check each field's type and range here,
        # naming the field, rather than failing mid-training.
        for name, least in (("epochs", 1), ("batch_size", 1), ("patience", 0)):
            value = getattr(self, name)
            if type(value) is not int or value < least:
                raise ContinualError(
                    f"training field {name!r} must be an integer of at least {least}, got {value!r}"
                )
        for name in ("prompt_lr", "head_lr"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ContinualError(
                    f"training field {name!r} must be a positive finite number, got {value!r}"
                )
        if self.prompt_init not in ("vocab", "random", "text"):
            raise ContinualError(
                f"training field 'prompt_init' must be 'vocab', 'random' or "
                f"'text', got {self.prompt_init!r}"
            )
        if self.prompt_text is not None and not isinstance(self.prompt_text, str):
            raise ContinualError(
                f"training field 'prompt_text' must be text or null, got {self.prompt_text!r}"
            )
        if self.prompt_init == "text" and not (self.prompt_text or "").strip():
            raise ContinualError(
                "training field 'prompt_text' must be a non-empty text when 'prompt_init' is 'text'"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def train_task(
    backbone: Backbone,
    task: Task,
    prompt_length: int,
    config: TrainingConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    placement: str | Placement = "input",
    on_epoch: Callable[[int, SoftPrompt, nn.Linear], None] | None = None,
) -> TaskEntry:
    """Train a soft prompt and a linear head for ``task``.

    ``on_epoch(epoch, prompt, head)`` is called after each epoch (1-based) with the live
    prompt and head, e.g. to log or evaluate them; an exception it raises ends training there.

    ``placement``: the prompt at the ``input`` or a deep prompt from the ``query_layer`` on
    (see `continual.prompt`). Returns a `TaskEntry` with detached tensors and an empty selector
    state (the pool fits that when it adds the entry).

    A text-to-text task (``task.generation`` set) trains a prompt alone (`train_text_task`).
    """
    if task.generation is not None:
        return train_text_task(
            backbone,
            task,
            prompt_length,
            config,
            seed=seed,
            progress=progress,
            placement=placement,
            on_epoch=on_epoch,
        )
    generator = torch.Generator().manual_seed(check_seed(seed))
    distributed.init(backbone.device)
    classifier = new_classifier(
        backbone, prompt_length, task.labels, config, generator, placement=placement
    )
    optimizer = torch.optim.Adam(param_groups(classifier, config))
    start = time.perf_counter()
    # A deep prompt's training texts (and validation texts) go through the layers below it
    # once, here, rather than once per epoch.
    lower = LowerStates.build(
        backbone,
        classifier.prompt,
        [text for text, _ in (*task.train, *task.validation)],
        config.batch_size,
    )
    steps = ClassifierSteps(backbone, classifier, task.labels, config.batch_size, lower)
    stats = _fit(steps, optimizer, task, config, generator, progress, on_epoch, config.head, seed)
    stats["train_seconds"] = round(time.perf_counter() - start, 2)
    return classifier_entry(task.name, task.labels, classifier, stats)


def _fit(
    steps: ClassifierSteps | TextToTextSteps,
    optimizer: torch.optim.Optimizer,
    task: Task,
    config: TrainingConfig,
    generator: torch.Generator,
    progress: bool,
    on_epoch: Callable[[int, SoftPrompt, Any], None] | None,
    head: str,
    seed: int,
) -> dict[str, Any]:
    """Run the shared loop over ``steps`` on ``task``'s splits; the entry's ``stats``."""
    start = time.perf_counter()
    hooks: list[Hook] = [
        ProgressHook(f"learn {task.name}", enabled=progress and distributed.is_main())
    ]
    if on_epoch is not None:
        hooks.append(_EpochCallback(on_epoch))
    trainer = Trainer(
        steps,
        optimizer,
        epochs=config.epochs,
        batch_size=config.batch_size,
        patience=config.patience,
        generator=generator,
        device=steps.backbone.device,
        hooks=hooks,
    )
    result = trainer.fit(task.train, task.validation)
    return entry_stats(
        result,
        steps.module,
        train_examples=len(task.train),
        seconds=time.perf_counter() - start,
        head=head,
        seed=seed,
    )


def train_text_task(
    backbone: Backbone,
    task: Task,
    prompt_length: int,
    config: TrainingConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    placement: str | Placement = "input",
    on_epoch: Callable[[int, SoftPrompt, Any], None] | None = None,
) -> TaskEntry:
    """Train a soft prompt before the language model for a text-to-text ``task``.

    The same loop as `train_task` (seeded, early-stopped, data-parallel) with
    `continual.text_training.TextToTextSteps`: teacher forcing, the loss on the target's tokens, and
    validation by the task's metric on greedy answers. The entry has no head; its
    ``generation`` settings are the task's, ``max_new_tokens`` filled in from the training
    targets where the task left it open. ``on_epoch`` gets None for the head.
    """
    generation = _generation_for(backbone, task, prompt_length, placement)
    generator = torch.Generator().manual_seed(check_seed(seed))
    distributed.init(backbone.device)
    prompt = SoftPrompt.initialise(
        backbone, prompt_length, config.prompt_init, text=config.prompt_text, generator=generator
    ).to(backbone.device)
    module = PromptedLanguageModel(backbone, prompt)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.prompt_lr)
    steps = TextToTextSteps(backbone, module, generation, config.batch_size)
    stats = _fit(steps, optimizer, task, config, generator, progress, on_epoch, "none", seed)
    # The validation figure is the task's metric (mean points), not an accuracy.
    stats["validation_score"] = stats.pop("validation_accuracy")
    stats["metric"] = generation.metric
    vectors = prompt.vectors.detach().cpu().clone()
    return TaskEntry(
        name=task.name,
        labels=[],
        prompt=vectors,
        head_weight=vectors.new_zeros(0, backbone.hidden_size),
        head_bias=vectors.new_zeros(0),
        stats=stats,
        generation=generation,
    )


def _generation_for(
    backbone: Backbone, task: Task, prompt_length: int, placement: str | Placement
) -> Generation:
    """A text-to-text task's generation settings, ``max_new_tokens`` filled in; refused on a
    backbone that cannot write text, with a prompt not at the input, or where the prompt,
    input and answer do not fit the model's positions."""
    backbone.check_generative()
    assert task.generation is not None
    Placement.of(placement).check_input(f"task {task.name!r} is text-to-text: it")
    generation = task.generation
    if generation.max_new_tokens is None:
        longest = default_max_new_tokens(backbone, [target for _, target in task.train])
        generation = dataclasses.replace(generation, max_new_tokens=longest)
    assert generation.max_new_tokens is not None
    limit = backbone.position_limit
    longest = prompt_length + backbone.max_length + generation.max_new_tokens
    if limit is not None and not backbone.is_seq2seq and longest > limit:
        raise ContinualError(
            f"task {task.name!r}: prompt_length {prompt_length} + max_length "
            f"{backbone.max_length} + max_new_tokens {generation.max_new_tokens} exceeds "
            f"the model's {limit} positions"
        )
    return generation


def new_classifier(
    backbone: Backbone,
    prompt_length: int,
    labels: Sequence[str],
    config: TrainingConfig,
    generator: torch.Generator,
    *,
    placement: str | Placement = "input",
) -> PromptedClassifier:
    """A new task's prompt and head on the backbone's device, drawn from ``generator``.

    The head is random (``config.head == "linear"``) or each label word's output embedding,
    frozen (``"verbalizer"``).
    """
    prompt = SoftPrompt.initialise(
        backbone,
        prompt_length,
        config.prompt_init,
        text=config.prompt_text,
        generator=generator,
        placement=placement,
    ).to(backbone.device)
    head = _new_head(backbone.hidden_size, len(labels), generator).to(backbone.device)
    if config.head == "verbalizer":
        from .verbalizer import verbalizer_weight

        with torch.no_grad():
            head.weight.copy_(verbalizer_weight(backbone, list(labels)))
        head.requires_grad_(False)
    elif config.head != "linear":
        raise ContinualError(f"unknown head {config.head!r}; use 'linear' or 'verbalizer'")
    return PromptedClassifier(backbone, prompt, head)


def param_groups(classifier: PromptedClassifier, config: TrainingConfig) -> list[dict]:
    """The optimizer's groups: the prompt at ``prompt_lr``, a trained head at ``head_lr``."""
    # A deep prompt learns at the same rate as one at the input: scaling the rate by its
    # vectors' larger spread (hidden states are about 12x the embeddings' for MiniLM) was
    # measured worse on text4 (oracle 69.3 with the square root of that ratio, three tasks at
    # chance with the full ratio, against 70.7 unscaled).
    groups: list[dict] = [{"params": list(classifier.prompt.parameters()), "lr": config.prompt_lr}]
    if config.head == "linear":
        groups.append({"params": list(classifier.head.parameters()), "lr": config.head_lr})
    return groups


def entry_stats(
    result: TrainingResult,
    classifier: nn.Module,
    *,
    train_examples: int,
    seconds: float,
    head: str,
    seed: int,
) -> dict[str, Any]:
    """A trained entry's ``stats``, as the manifest records them (calibration comes later)."""
    stats: dict[str, Any] = {
        "train_examples": train_examples,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "validation_accuracy": None
        if result.best_score is None
        else round(100 * result.best_score, 2),
        "train_seconds": round(seconds, 2),
        "trainable_parameters": trainable_parameters(classifier),
        "head": head,
        "seed": seed,
    }
    if distributed.world_size() > 1:
        stats["processes"] = distributed.world_size()
    return stats


def classifier_entry(
    name: str, labels: Sequence[str], classifier: PromptedClassifier, stats: dict[str, Any]
) -> TaskEntry:
    """The entry of a trained classifier: detached copies on the CPU (how entries are stored;
    the pool moves them as needed) and an empty selector state (fitted when it is added)."""
    return TaskEntry(
        name=name,
        labels=list(labels),
        prompt=classifier.prompt.vectors.detach().cpu().clone(),
        head_weight=classifier.head.weight.detach().cpu().clone(),
        head_bias=classifier.head.bias.detach().cpu().clone(),
        stats=stats,
    )


class _EpochCallback(Hook):
    """`train_task`'s ``on_epoch(epoch, prompt, head)`` as a hook."""

    def __init__(self, callback: Callable[[int, SoftPrompt, Any], None]) -> None:
        self.callback = callback

    def after_epoch(self, trainer: Trainer, epoch: int, score: float | None) -> None:
        module = trainer.steps.module
        assert isinstance(module, (PromptedClassifier, PromptedLanguageModel))
        self.callback(epoch, module.prompt, getattr(module, "head", None))


def _new_head(hidden: int, classes: int, generator: torch.Generator) -> nn.Linear:
    # Built on the meta device so that nn.Linear's own initialisation does not draw from the
    # global random state; the weights then come from the task's generator.
    head = nn.Linear(hidden, classes, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)
        head.bias.zero_()
    return head
