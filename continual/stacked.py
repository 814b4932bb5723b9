"""A pool's entries batched on the backbone's device: each row's own prompt and head, gathered
for the rows at hand, so that one forward pass serves a batch whose rows belong to different
tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .backbone import Backbone
from .entry import TaskEntry
from .generate import Generated, Sampling, generate
from .placement import Placement, deep_pass
from .selector import UNKNOWN_TASK


class StackedEntries:
    """Prompts (B, L, H) or (B, D, L, H), head weights (B, C, H) and biases (B, C) of the entries
    that a batch's B rows use, padded to the most labels C among them (a task's missing classes
    get bias -inf).

    Gathered per batch, not kept for every entry: a pool of 1,000 tasks holds no second copy of
    its prompts and heads, and a backbone moved to another device is followed at the next batch.
    """

    def __init__(self, backbone: Backbone, placement: Placement, entries: Sequence[TaskEntry]):
        self.backbone = backbone
        self.placement = placement
        self.entries = list(entries)

    def prompts(self, tasks: torch.Tensor) -> torch.Tensor:
        """The prompts of the entries ``tasks`` (B,) names, stacked on the backbone's device."""
        chosen = [self.entries[t].prompt for t in tasks.tolist()]
        return torch.stack(chosen).to(self.backbone.device)

    def heads(self, tasks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head weights (B, C, H) and biases (B, C) of the entries ``tasks`` (B,) names."""
        chosen = [self.entries[t] for t in tasks.tolist()]
        classes = max([1, *(len(entry.labels) for entry in chosen)])
        weights = torch.zeros(len(chosen), classes, self.backbone.hidden_size)
        biases = torch.full((len(chosen), classes), float("-inf"))
        for row, entry in enumerate(chosen):
            weights[row, : len(entry.labels)] = entry.head_weight
            biases[row, : len(entry.labels)] = entry.head_bias
        device = self.backbone.device
        return weights.to(device), biases.to(device)

    def _classify(self, features: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        weights, biases = self.heads(tasks)
        return torch.einsum("bh,bch->bc", features, weights) + biases

    @torch.no_grad()
    def logits(
        self, tasks: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, C) of each row under its own task's prompt and head (``tasks`` (B,)
        holds entry indices), in one forward pass."""
        features = self.placement.features(
            self.backbone, self.prompts(tasks), input_ids, attention_mask
        )
        return self._classify(features, tasks)

    @torch.no_grad()
    def one_pass_logits(
        self,
        rows: list[int],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        routed: torch.Tensor,
        settle: Callable[[list[int], torch.Tensor], None],
    ) -> torch.Tensor:
        """Logits (B, C) of one pass that routes at the query layer and runs the routed prompts.

        Rows whose task is already set in ``routed`` (N,) keep it; the others are routed on the
        query layer's states in the middle of the pass by ``settle(rows, queries)``, which
        writes ``routed``. Refused rows run under the first task's prompt, their answer unused.
        """
        length = self.entries[0].prompt.shape[-2]
        chosen: list[torch.Tensor] = []

        def prompts_for(hidden: torch.Tensor) -> torch.Tensor:
            open_at = [k for k, row in enumerate(rows) if routed[row] == UNKNOWN_TASK]
            if open_at:
                queries = self.backbone.pool(hidden[open_at, length:], attention_mask[open_at])
                settle([rows[k] for k in open_at], queries.cpu())
            index = routed[rows].clamp(min=0)
            chosen.append(index)
            return self.prompts(index)

        features = deep_pass(
            self.backbone, input_ids, attention_mask, length, self.backbone.query_layer, prompts_for
        )
        return self._classify(features, chosen[0])

    def answers(
        self,
        rows: list[int],
        texts: Sequence[str],
        routed: torch.Tensor,
        sampling: Sampling | None = None,
        beams: int = 1,
    ) -> list[Generated]:
        """Answers of ``rows``, each routed to a text-to-text task, in one batched generation."""
        settings = [self.entries[int(routed[row])].generation for row in rows]
        batch = self.backbone.tokenize([texts[row] for row in rows])
        return generate(
            self.backbone,
            self.prompts(routed[rows]),
            batch["input_ids"],
            batch["attention_mask"],
            [s.max_new_tokens or 1 for s in settings if s is not None],
            [s.stop for s in settings if s is not None],
            sampling,
            beams,
        )

    def answer(
        self,
        texts: Sequence[str],
        routed: torch.Tensor,
        batch_size: int,
        *,
        one_pass: bool,
        settle: Callable[[list[int], torch.Tensor], None],
        sampling: Sampling | None,
        beams: int,
    ) -> tuple[list[str | None], list[str | None], list[float]]:
        """Each text's label, written answer and its probability under its routed task
        (``routed`` (N,), `UNKNOWN_TASK` where refused: no answer), in batches of
        ``batch_size``. ``one_pass``: the rows still open are routed inside the pass
        (`one_pass_logits`)."""
        labels: list[str | None] = [None] * len(texts)
        outputs: list[str | None] = [None] * len(texts)
        scores = [0.0] * len(texts)
        # Similar lengths in one batch waste less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        if not one_pass:  # refused rows need no prompted pass
            order = [i for i in order if routed[i] != UNKNOWN_TASK]
            writes = [i for i in order if self.entries[int(routed[i])].generation is not None]
            for start in range(0, len(writes), batch_size):
                rows = writes[start : start + batch_size]
                answers = self.answers(rows, texts, routed, sampling, beams)
                for row, answer in zip(rows, answers):
                    outputs[row], scores[row] = answer.text, answer.score
            order = [i for i in order if self.entries[int(routed[i])].generation is None]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.backbone.tokenize([texts[i] for i in rows])
            if one_pass:
                logits = self.one_pass_logits(
                    rows, batch["input_ids"], batch["attention_mask"], routed, settle
                )
            else:
                logits = self.logits(routed[rows], batch["input_ids"], batch["attention_mask"])
            probabilities = logits.softmax(dim=1)  # padded classes have bias -inf: probability 0
            best, choice = probabilities.max(dim=1)
            for row, label_index, probability in zip(rows, choice.tolist(), best.tolist()):
                task_index = int(routed[row])
                if task_index != UNKNOWN_TASK:
                    labels[row] = self.entries[task_index].labels[label_index]
                    scores[row] = probability
        return labels, outputs, scores
