"""A classification task's trainable part and its training steps: the prompted pass's
logits under a soft prompt and a linear head, cross-entropy, validation accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .data import Example
from .errors import TaskDataError
from .prompt import LowerStates, SoftPrompt
from .trainer import Trainer, weighted_loss


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
