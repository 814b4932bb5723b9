"""Learning one task: a new soft prompt and head over the frozen backbone, or a prompt alone
before the language model for a text-to-text task (`train_text_task`).

Only the new prompt and head receive gradients; the backbone and every earlier task are out of
reach of the optimizer. `train_task` runs the shared loop (`continual.trainer.Trainer`: seeded,
early stopping on the validation split, progress, data-parallel under torchrun or Accelerate)
with this module's `ClassifierSteps`: the prompted pass's logits, cross-entropy, accuracy.
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
import torch.nn.functional as F
from torch import nn

from . import distributed
from .backbone import Backbone
from .data import Example, Generation, Task
from .entry import TaskEntry
from .errors import ContinualError, TaskDataError
from .generate import PromptedLanguageModel, TextToTextSteps, default_max_new_tokens
from .placement import Placement
from .prompt import LowerStates, PromptInit, SoftPrompt
from .trainer import (
    Hook,
    ProgressHook,
    Trainer,
    TrainingResult,
    check_seed,
    trainable_parameters,
    weighted_loss,
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
    `continual.generate.TextToTextSteps`: teacher forcing, the loss on the target's tokens, and
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


@dataclass
class ClassifierBatch:
    """A tokenized training batch: ids and mask (B, n), class indices (B,), and a deep
    prompt's saved lower-layer states (B, n, H) or None."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    lower: torch.Tensor | None = None


class ClassifierSteps:
    """A classification task's `TaskSteps`: logits of the prompted pass, cross-entropy, and
    validation accuracy.

    Args:
        backbone: the frozen backbone.
        module: the task's prompt and head.
        labels: the task's labels; an example's target is its label's index.
        batch_size: rows per validation batch.
        lower: a deep prompt's saved lower-layer states (`LowerStates`), or None.
    """

    def __init__(
        self,
        backbone: Backbone,
        module: PromptedClassifier,
        labels: Sequence[str],
        batch_size: int,
        lower: LowerStates | None = None,
    ) -> None:
        self.backbone = backbone
        self.module = module
        self.index = {label: number for number, label in enumerate(labels)}
        self.batch_size = batch_size
        self.lower = lower

    def batch(self, examples: Sequence[Example]) -> ClassifierBatch:
        texts = [text for text, _ in examples]
        tokens = self.backbone.tokenize(texts)
        mask = tokens["attention_mask"]
        return ClassifierBatch(
            tokens["input_ids"],
            mask,
            self.targets(examples),
            None if self.lower is None else self.lower.batch(texts, mask),
        )

    def targets(self, examples: Sequence[Example]) -> torch.Tensor:
        """Each example's label index (B,), on the device."""
        try:
            indices = [self.index[label] for _, label in examples]
        except KeyError as error:
            raise TaskDataError(
                f"label {error.args[0]!r} is not one of {list(self.index)}"
            ) from None
        return torch.tensor(indices, device=self.backbone.device)

    def forward(self, model: nn.Module, batch: ClassifierBatch) -> torch.Tensor:
        return model(batch.input_ids, batch.attention_mask, batch.lower)

    def loss(
        self,
        output: torch.Tensor,
        batch: ClassifierBatch,
        row_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        per_row = F.cross_entropy(output, batch.targets, reduction="none")
        return weighted_loss(per_row, row_weights)

    def score(self, examples: Sequence[Example]) -> tuple[float, int]:
        """Examples labelled right, and examples seen."""
        correct = 0
        for first in range(0, len(examples), self.batch_size):
            batch = self.batch(examples[first : first + self.batch_size])
            predicted = self.module(batch.input_ids, batch.attention_mask, batch.lower).argmax(1)
            correct += int((predicted == batch.targets).sum())
        return correct, len(examples)


def train_step(
    backbone: Backbone,
    prompt: SoftPrompt,
    head: nn.Linear,
    optimizer: torch.optim.Optimizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    *,
    lower: torch.Tensor | None = None,
) -> float:
    """One optimizer step of `train_task`'s loop on one tokenized batch; returns the loss.

    Only ``prompt`` and ``head`` get gradients: the frozen backbone's weights never need them,
    and with a deep prompt nothing below the query layer is differentiated at all. ``lower``
    (deep prompts only): the batch's saved states at the prompt's first layer, so the layers
    below are not run either (`LowerStates`). Benchmarks time this step alone.
    """
    steps = ClassifierSteps(backbone, PromptedClassifier(backbone, prompt, head), [], 1)
    trainer = Trainer(
        steps,
        optimizer,
        epochs=1,
        batch_size=len(input_ids),
        patience=0,
        generator=torch.Generator(),
        device=backbone.device,
    )
    return trainer.training_step(ClassifierBatch(input_ids, attention_mask, targets, lower))


class _EpochCallback(Hook):
    """`train_task`'s ``on_epoch(epoch, prompt, head)`` as a hook."""

    def __init__(self, callback: Callable[[int, SoftPrompt, Any], None]) -> None:
        self.callback = callback

    def after_epoch(self, trainer: Trainer, epoch: int, score: float | None) -> None:
        module = trainer.steps.module
        assert isinstance(module, (PromptedClassifier, PromptedLanguageModel))
        self.callback(epoch, module.prompt, getattr(module, "head", None))


class PromptedClassifier(nn.Module):
    """One task's trainable part as a module: logits of a batch under ``prompt`` and ``head``.

    The frozen backbone is held but not registered as a submodule, so that
    `DistributedDataParallel` broadcasts and synchronises the prompt and head alone, not the
    backbone's weights, which every process loads identically and never changes.
    """

    backbone: Backbone

    def __init__(self, backbone: Backbone, prompt: SoftPrompt, head: nn.Linear) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # bypasses submodule registration
        self.prompt = prompt
        self.head = head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lower: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, C) of a tokenized batch (``lower``: see `train_step`)."""
        prompts = self.prompt(len(input_ids))
        features = self.prompt.placement.features(
            self.backbone, prompts, input_ids, attention_mask, lower
        )
        return self.head(features)


def _new_head(hidden: int, classes: int, generator: torch.Generator) -> nn.Linear:
    # Built on the meta device so that nn.Linear's own initialisation does not draw from the
    # global random state; the weights then come from the task's generator.
    head = nn.Linear(hidden, classes, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)
        head.bias.zero_()
    return head
