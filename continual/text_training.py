"""Learning to write: the teacher-forced loss of a text-to-text task and its training steps.

Training feeds ``[prompt; input; target]`` and scores the target's tokens only; validation
scores greedy answers (`continual.generate`) by the task's metric.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .backbone import Backbone
from .data import Generation
from .generate import decoder_start, generate, prompted_input, target_token_ids
from .metrics import task_metric_scores
from .prompt import SoftPrompt
from .trainer import weighted_loss

IGNORE = -100  # label of a position that is not scored


def teacher_forced_loss(
    backbone: Backbone,
    prompts: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: Sequence[Sequence[int]],
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each row's target tokens given its prompt and input; (B, L, H) prompts.

    The inputs are right-padded (`Backbone.tokenize`); each row's loss is the mean over its
    target tokens, and the batch's loss the mean over rows (or their sum weighted by
    ``row_weights``, as data-parallel training weighs its shares).
    """
    per_row = target_losses(backbone, prompts, input_ids, attention_mask, targets)
    return weighted_loss(per_row, row_weights)


def target_losses(
    backbone: Backbone,
    prompts: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Each row's mean cross-entropy over its target tokens (B,): `teacher_forced_loss` per row."""
    backbone.check_generative()
    with backbone.lock:
        if backbone.is_seq2seq:
            logits, labels = _seq2seq_logits(backbone, prompts, input_ids, attention_mask, targets)
        else:
            logits, labels = _decoder_logits(backbone, prompts, input_ids, attention_mask, targets)
    tokens = F.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )  # (B, T)
    return tokens.sum(1) / (labels != IGNORE).sum(1).clamp(min=1)


def _padded(rows: Sequence[Sequence[int]], fill: int, device: torch.device) -> torch.Tensor:
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return out.to(device)


def _decoder_logits(
    backbone: Backbone,
    prompts: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, V) at the positions that predict the targets, and the labels (B, T)."""
    device = input_ids.device
    lengths = attention_mask.sum(1).tolist()
    pad = int(backbone.tokenizer.pad_token_id)
    sequences = [
        input_ids[i, :n].tolist() + list(target)
        for i, (n, target) in enumerate(zip(lengths, targets))
    ]
    ids = _padded(sequences, pad, device)  # (B, S): input, target, padding
    mask = _padded([[1] * len(row) for row in sequences], 0, device)
    # Position p holds the token position p predicts: each target starts at its input's last
    # position, n - 1; the sequence's last position predicts nothing.
    labels = _padded(
        [[IGNORE] * (n - 1) + list(target) + [IGNORE] for n, target in zip(lengths, targets)],
        IGNORE,
        device,
    )  # (B, S)
    length = prompts.shape[1]
    embeds = torch.cat([prompts, backbone.embed(ids)], dim=1)  # (B, L + S, H)
    full_mask = torch.cat([mask.new_ones(len(ids), length), mask], dim=1)
    # Only positions from the shortest input's last token on predict a target token: the
    # others' logits (B x V each) are never computed.
    first = min(lengths) - 1
    keep = ids.shape[1] - first
    options: dict[str, Any] = {}
    if "logits_to_keep" in inspect.signature(backbone.language_model.forward).parameters:
        options["logits_to_keep"] = keep
    logits = backbone.language_model(
        inputs_embeds=embeds.to(backbone.dtype),
        attention_mask=full_mask,
        use_cache=False,
        **options,
    ).logits[:, -keep:]
    return logits, labels[:, first:]


def _seq2seq_logits(
    backbone: Backbone,
    prompts: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder logits (B, T, V) of the targets after the decoder's start token, and labels."""
    model = backbone.language_model
    device = input_ids.device
    start = decoder_start(backbone)
    pad = int(backbone.tokenizer.pad_token_id)
    decoder_ids = _padded([[start] + list(target[:-1]) for target in targets], pad, device)
    decoder_mask = _padded([[1] * len(target) for target in targets], 0, device)
    labels = _padded(targets, IGNORE, device)
    embeds, mask = prompted_input(backbone, prompts, input_ids, attention_mask)
    logits = model(
        inputs_embeds=embeds.to(backbone.dtype),
        attention_mask=mask,
        decoder_input_ids=decoder_ids,
        decoder_attention_mask=decoder_mask,
        use_cache=False,
    ).logits
    return logits, labels


class PromptedLanguageModel(torch.nn.Module):
    """A text-to-text task's trainable part as a module: each row's teacher-forced loss (B,)
    under ``prompt``. The frozen backbone is held but not registered (as in
    `continual.classifier.PromptedClassifier`), so data-parallel training syncs the prompt alone."""

    backbone: Backbone

    def __init__(self, backbone: Backbone, prompt: SoftPrompt) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # bypasses submodule registration
        self.prompt = prompt

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        targets: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        prompts = self.prompt(len(input_ids))
        return target_losses(self.backbone, prompts, input_ids, attention_mask, targets)


@dataclass
class TextBatch:
    """A tokenized training batch: ids and mask (B, n) and each row's target token ids."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: list[list[int]]


# Weight of the teacher-forced loss in a validation score: small enough to decide only between
# epochs whose metric ties (exact match is often 0 for every epoch at first).
LOSS_TIE_BREAK = 1e-6


class TextToTextSteps:
    """A text-to-text task's `continual.trainer.TaskSteps`: teacher-forced loss on the target
    tokens, and validation by the task's metric on greedy answers.

    The validation score of an example is its metric as a share (0 to 1) plus
    `LOSS_TIE_BREAK` × exp(-its batch's teacher-forced loss): epochs are compared by the
    metric, and where that ties, the lower loss wins.

    Args:
        backbone: the frozen language model.
        module: the task's prompt (`PromptedLanguageModel`).
        generation: the task's settings (``max_new_tokens`` set).
        batch_size: rows per validation batch.
    """

    def __init__(
        self,
        backbone: Backbone,
        module: PromptedLanguageModel,
        generation: Generation,
        batch_size: int,
    ) -> None:
        self.backbone = backbone
        self.module = module
        self.generation = generation
        self.limit = generation.max_new_tokens or 1
        self.batch_size = batch_size

    def batch(self, examples: Sequence[tuple[str, str]]) -> TextBatch:
        tokens = self.backbone.tokenize([text for text, _ in examples])
        targets = target_token_ids(self.backbone, [target for _, target in examples], self.limit)
        return TextBatch(tokens["input_ids"], tokens["attention_mask"], targets)

    def forward(self, model: torch.nn.Module, batch: TextBatch) -> torch.Tensor:
        return model(batch.input_ids, batch.attention_mask, batch.targets)

    def loss(
        self, output: torch.Tensor, batch: TextBatch, row_weights: torch.Tensor | None
    ) -> torch.Tensor:
        return weighted_loss(output, row_weights)

    @torch.no_grad()
    def score(self, examples: Sequence[tuple[str, str]]) -> tuple[float, int]:
        total = 0.0
        prompt = self.module.prompt
        for first in range(0, len(examples), self.batch_size):
            chunk = examples[first : first + self.batch_size]
            batch = self.batch(chunk)
            prompts = prompt(len(chunk))
            answers = generate(
                self.backbone,
                prompts,
                batch.input_ids,
                batch.attention_mask,
                [self.limit] * len(chunk),
                [self.generation.stop] * len(chunk),
            )
            points = task_metric_scores(
                self.generation.metric, [a.text for a in answers], [t for _, t in chunk]
            )
            losses = target_losses(
                self.backbone, prompts, batch.input_ids, batch.attention_mask, batch.targets
            )
            total += sum(points) / 100 + LOSS_TIE_BREAK * float(torch.exp(-losses).sum())
        return total, len(examples)
