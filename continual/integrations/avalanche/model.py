"""`PromptPoolModel`: a `PromptPool` as an Avalanche model over token ids.

The loss it serves (`PromptPoolStrategy`): every input is routed to one entry (by its task
label in a task-incremental scenario, else by the pool's selector) and scored by that entry's
head; the output is the routed head's log-probabilities on its own classes and
``FLOOR_LOG_PROB`` on every other class. Cross-entropy on that output is the routed head's
cross-entropy for an input routed right, and about ``-FLOOR_LOG_PROB`` (9.2 nats) for an input
routed to another task or refused: a misrouted input costs as much as a head that gives its
class 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ...classifier import PromptedClassifier
from ...errors import ContinualError, TaskDataError
from ...placement import INPUT
from ...pool import PromptPool
from ...selector import UNKNOWN_TASK, OracleSelector
from .convert import attention_mask, pad_token_id

# Log-probability every class outside the routed entry gets. A misrouted (or refused) input
# therefore has a loss of about -FLOOR_LOG_PROB = log(1e4) = 9.21 nats: finite, and far above
# the loss of any input routed right whose head gives its class more than 1e-4.
FLOOR_LOG_PROB = math.log(1e-4)
# Kept for the names of earlier versions: the value other classes' outputs get.
OTHER_TASK_LOGIT = FLOOR_LOG_PROB

TaskLabelMode = Literal["auto"] | bool


class PromptPoolModel(nn.Module):
    """A `PromptPool` as an Avalanche model: token ids (B, n) → scores over global classes.

    In training mode (a candidate set) the output is the candidate's log-probabilities on the
    new experience's classes and `FLOOR_LOG_PROB` elsewhere. In eval mode each row is routed to
    one entry (the candidate included while it trains, so periodic evaluation and early stopping
    see it): by its task label when task labels are used, else by the selector; the output is
    the routed head's log-probabilities on its classes and `FLOOR_LOG_PROB` elsewhere. The last
    column means "refused" (selector ``min_score``, or a task label no entry has): 0 there for
    such rows, and no target ever points to it.

    Task labels (``use_task_labels``): with ``"auto"`` rows are routed by their task label
    when every entry was trained on an experience with its own task label (task-incremental:
    the oracle path), and by the selector otherwise (class-incremental, all labels 0);
    ``True``/``False`` force either. One-class experiences (class-incremental splits) get a
    head with the class and a "not <class>" output; with no negative examples it always
    answers the class, so the selector, fitted on each class's inputs, decides the class (a
    class-conditional classifier over frozen features, as streaming LDA is).

    The pool is a plain attribute, not a submodule: ``parameters()`` and ``state_dict()`` are
    the candidate's alone, which is what Avalanche's optimizer and plugins handle.
    """

    def __init__(self, pool: PromptPool, pad_id: int) -> None:
        super().__init__()
        self.pool = pool
        self.pad_id = pad_id
        self.class_ids: list[list[int]] = []  # global class id of each entry's head output
        self.task_labels: list[int | None] = []  # the experience task label of each entry
        self.min_outputs = 0  # outputs needed to cover every class id seen so far
        self.use_task_labels: TaskLabelMode = "auto"
        self.candidate: PromptedClassifier | None = None
        self.candidate_class_ids: list[int] = []
        self.candidate_task_label: int | None = None
        self.candidate_state: dict[str, torch.Tensor] = {}

    @classmethod
    def for_pool(
        cls, pool: PromptPool, class_ids: Sequence[Sequence[int]] | None, stats_key: str
    ) -> PromptPoolModel:
        """The model over ``pool``, its entries' class ids and task labels read from each
        entry's ``stats[stats_key]`` (or given: ``class_ids``, one list per entry)."""
        model = cls(pool, pad_token_id(pool.backbone.tokenizer))
        for number, entry in enumerate(pool.entries):
            saved = entry.stats.get(stats_key, {})
            ids = class_ids[number] if class_ids is not None else saved.get("class_ids")
            if ids is None:
                raise ContinualError(
                    f"pool entry {entry.name!r} has no class ids: give class_ids for each "
                    f"entry (the pool has {len(pool.entries)})"
                )
            model.add_task(ids, saved.get("task_label"))
        return model

    def add_task(self, class_ids: Sequence[int], task_label: int | None = None) -> None:
        """Record the global class ids (and task label) of the entry just added to the pool."""
        self.class_ids.append([int(c) for c in class_ids])
        self.task_labels.append(task_label)

    def start_candidate(
        self,
        candidate: PromptedClassifier,
        class_ids: list[int],
        task_label: int | None,
        selector_state: dict[str, torch.Tensor],
    ) -> None:
        """Train ``candidate`` (outputs for ``class_ids``) and route to it while it trains."""
        self.candidate = candidate
        self.candidate_class_ids = class_ids
        self.candidate_task_label = task_label
        self.candidate_state = selector_state
        self.min_outputs = max(self.min_outputs, max(class_ids) + 1)

    def finish_candidate(self) -> None:
        """The candidate became a pool entry: record its class ids and task label."""
        self.add_task(self.candidate_class_ids, self.candidate_task_label)
        self.candidate = None
        self.candidate_class_ids = []
        self.candidate_task_label = None
        self.candidate_state = {}

    def local_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Global class ids (B,) as the candidate's output indices; a class outside its
        experience is a `TaskDataError` (replayed data has no output here)."""
        local = {class_id: number for number, class_id in enumerate(self.candidate_class_ids)}
        values = targets.tolist()
        strangers = sorted({t for t in values if t not in local})
        if strangers:
            raise TaskDataError(
                f"a training batch has classes {strangers} outside the experience's "
                f"{self.candidate_class_ids}"
            )
        return torch.tensor([local[t] for t in values], device=targets.device)

    @property
    def num_classes(self) -> int:
        """Class outputs (the "refused" column not counted)."""
        ids = self.class_ids + [self.candidate_class_ids]
        known = max((max(c) + 1 for c in ids if c), default=0)
        return max(known, self.min_outputs)

    def _labels_in_use(self, task_labels: list[int | None]) -> bool:
        if self.use_task_labels is not True and self.use_task_labels is not False:
            # auto: task-incremental exactly when every entry has its own task label.
            known = [t for t in task_labels if t is not None]
            return bool(known) and len(known) == len(task_labels) == len(set(known))
        return bool(self.use_task_labels)

    def trimmed(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, n) on the backbone's device and their mask, without the columns that
        are padding in every row (less compute, the same features): as the backbone's own
        tokenizer pads a batch."""
        ids = ids.long().to(self.pool.backbone.device)
        mask = attention_mask(ids, self.pad_id)
        keep = mask.bool().any(0)
        return ids[:, keep], mask[:, keep]

    def spread(self, logits: torch.Tensor) -> torch.Tensor:
        """The candidate's logits (B, C) as scores over every class (B, num_classes + 1): its
        log-probabilities in its classes' columns, `FLOOR_LOG_PROB` elsewhere."""
        out = torch.full((len(logits), self.num_classes + 1), FLOOR_LOG_PROB, device=logits.device)
        columns = torch.tensor(self.candidate_class_ids, device=logits.device)
        return out.index_copy(1, columns, logits.log_softmax(1)[:, : len(columns)])

    def forward(self, ids: torch.Tensor, task_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, num_classes + 1) of token ids (B, n); see the class docstring."""
        ids, mask = self.trimmed(ids)
        if self.training and self.candidate is not None:
            return self.spread(self.candidate(ids, mask))
        out = torch.full((len(ids), self.num_classes + 1), FLOOR_LOG_PROB, device=ids.device)
        with torch.no_grad():
            return self._routed(ids, mask, task_labels, out)

    def _routed(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        task_labels: torch.Tensor | None,
        out: torch.Tensor,
    ) -> torch.Tensor:
        entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = [
            (e.prompt, e.head_weight, e.head_bias) for e in self.pool.entries
        ]
        class_ids = list(self.class_ids)
        labels = list(self.task_labels)
        states = [e.selector_state for e in self.pool.entries]
        if self.candidate is not None:
            entries.append(
                (
                    self.candidate.prompt.vectors.detach(),
                    self.candidate.head.weight.detach(),
                    self.candidate.head.bias.detach(),
                )
            )
            class_ids.append(self.candidate_class_ids)
            labels.append(self.candidate_task_label)
            states.append(self.candidate_state)
        device = out.device
        if not entries:  # nothing learned yet: every input is refused
            out[:, -1] = 0.0
            return out
        if task_labels is not None and self._labels_in_use(labels):
            where = {label: index for index, label in enumerate(labels)}
            routed = torch.tensor(
                [where.get(int(t), UNKNOWN_TASK) for t in task_labels.tolist()], device=device
            )
        else:
            if isinstance(self.pool.selector, OracleSelector):
                raise ContinualError(
                    "the oracle selector routes by task label, and this scenario gives none "
                    "(or the same one to several experiences)"
                )
            with_last = self.pool.selector.with_last
            queries = self.pool.backbone.query_ids(ids, mask, with_last=with_last).cpu()
            routed = self.pool.selector.route(queries, states)[0].to(device)
        refused = routed == UNKNOWN_TASK
        out[refused, -1] = 0.0
        prompts = torch.stack([prompt.to(device) for prompt, _, _ in entries])
        rows = (~refused).nonzero().squeeze(1)
        if len(rows):
            index = routed[rows]
            features = INPUT.features(self.pool.backbone, prompts[index], ids[rows], mask[rows])
            for task in index.unique().tolist():
                chosen = index == task
                _, weight, bias = entries[task]
                local = (features[chosen] @ weight.to(device).T + bias.to(device)).log_softmax(1)
                columns = torch.tensor(class_ids[task], device=device)
                out[rows[chosen].unsqueeze(1), columns] = local[:, : len(columns)]
        return out
