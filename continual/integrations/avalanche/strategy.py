"""`PromptPoolStrategy`: a `PromptPool` grown and evaluated inside Avalanche's loops.

``strategy.train(experience)`` adds one pool entry with the pool's own training
(`PromptPool.learn`), and ``strategy.eval(stream)`` runs Avalanche's ordinary evaluation loop, so
Avalanche's metrics (accuracy, forgetting, BWT, ...) and loggers work unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from ...data import Task
from ...errors import ContinualError
from ...pool import PromptPool
from ...selector import UNKNOWN_TASK, OracleSelector
from .convert import (
    LabelNames,
    _experience_task,
    _label_namer,
    _matching,
    attention_mask,
    benchmark_info,
    pad_token_id,
)

# Logit given to classes a row was not routed to. Finite (unlike -inf) so that Avalanche's loss
# metrics stay finite; far below any real logit, so argmax never picks such a class.
OTHER_TASK_LOGIT = -1e9


# ---------------------------------------------------------------------------------------------
# The prompt pool inside Avalanche


class PromptPoolModel(nn.Module):
    """A `PromptPool` as an Avalanche model: token ids (B, n) → logits over global classes.

    Every row is routed by the pool's selector, with no task label, and scored by its routed
    task's prompt and head. The routed task's logits go to that task's global class positions;
    every other class gets `OTHER_TASK_LOGIT`. So argmax is right exactly when the row was routed
    to its own task and labelled right: the pool's accuracy. The last output column means
    "refused" (a selector with ``min_score`` may refuse a row); no target ever points to it.

    The pool is a plain attribute, not a submodule: the model has no parameters of its own and
    Avalanche never moves or optimizes the pool's frozen backbone.
    """

    def __init__(self, pool: PromptPool, pad_id: int) -> None:
        super().__init__()
        self.pool = pool
        self.pad_id = pad_id
        self.class_ids: list[list[int]] = []  # global class ids of each pool entry's head
        self.min_outputs = 0  # outputs needed to cover every class id evaluated so far

    def add_task(self, class_ids: Sequence[int]) -> None:
        """Record the global class ids of the entry just added to the pool."""
        self.class_ids.append([int(c) for c in class_ids])

    @property
    def num_classes(self) -> int:
        """Class outputs (the "refused" column not counted)."""
        known = max((max(ids) + 1 for ids in self.class_ids if ids), default=0)
        return max(known, self.min_outputs)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes + 1) of token ids (B, n); see the class docstring."""
        if len(self.class_ids) != len(self.pool.entries):
            raise ContinualError(
                f"the pool has {len(self.pool.entries)} tasks but class ids are known for "
                f"{len(self.class_ids)}; add tasks through PromptPoolStrategy.train"
            )
        if not self.class_ids:
            raise ContinualError("the pool has no task yet: train on an experience first")
        ids = ids.long().cpu()
        mask = attention_mask(ids, self.pad_id)
        # Drop all-padding columns: the pool pads to the longest text of a batch too.
        keep = mask.bool().any(0)
        ids, mask = ids[:, keep], mask[:, keep]
        routed, _ = self.pool.route_tokens(ids, mask)
        out = torch.full((len(ids), self.num_classes + 1), OTHER_TASK_LOGIT)
        refused = routed == UNKNOWN_TASK
        out[refused, -1] = 0.0
        rows = (~refused).nonzero().squeeze(1)
        if len(rows):
            index = routed[rows]
            local = self.pool.task_logits(index, ids[rows], mask[rows])
            for task in index.unique().tolist():
                chosen = index == task
                columns = torch.tensor(self.class_ids[task])
                out[rows[chosen].unsqueeze(1), columns] = local[chosen][:, : len(columns)]
        return out


class PromptPoolStrategy(SupervisedTemplate):
    """An Avalanche strategy that grows a `PromptPool`: one entry per training experience.

    ``train(experience)`` builds a `Task` from the experience (decoded token ids, labels named
    as in the benchmark, validation from the benchmark's ``valid_stream`` if it has one) and
    calls ``pool.learn`` on it: the prompt and head are exactly what the pool would train on
    that task. Avalanche's SGD loop is skipped (the backbone is frozen and the pool trains its own
    prompt), but ``before_training_exp``/``after_training_exp`` and the other experience-level
    callbacks fire, so plugins and the forgetting/BWT metrics see every experience. Per-epoch
    and per-iteration training callbacks do not fire: there are no Avalanche iterations.

    ``eval(stream)`` is Avalanche's own evaluation loop over `PromptPoolModel`, which routes
    every input with no task label; accuracy is the pool's "routed and right" accuracy.

    Args:
        pool: the pool to grow (its training config, prompt length and selector are used).
        task_names: a name per experience (default: the benchmark's, else ``experience_<i>``).
        label_names: a label name per global class id (default: the benchmark's, else the
            class id as a string).
        class_ids: global class ids of the entries already in ``pool``, one list per entry.
        eval_mb_size: evaluation mini-batch size.
        plugins, evaluator, eval_every: as for any Avalanche strategy.
        seed: passed to ``pool.learn`` for every experience.
        progress: show the pool's training progress bars.

    Example:
        >>> strategy = PromptPoolStrategy(pool=pool, evaluator=EvaluationPlugin(
        ...     accuracy_metrics(experience=True, stream=True), loggers=[TextLogger()]))
        >>> for experience in benchmark.train_stream:
        ...     strategy.train(experience)
        ...     strategy.eval(benchmark.test_stream)
    """

    def __init__(
        self,
        *,
        pool: PromptPool,
        task_names: Sequence[str] | None = None,
        label_names: LabelNames | None = None,
        class_ids: Sequence[Sequence[int]] | None = None,
        eval_mb_size: int = 64,
        plugins: Sequence[SupervisedPlugin] | None = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        if isinstance(pool.selector, OracleSelector):
            raise ContinualError(
                "PromptPoolStrategy routes without task labels; the oracle selector cannot route"
            )
        model = PromptPoolModel(pool, pad_token_id(pool.backbone.tokenizer))
        known = list(class_ids or [])
        if len(known) != len(pool.entries):
            raise ContinualError(
                f"the pool already has {len(pool.entries)} tasks: give class_ids for each "
                f"(got {len(known)})"
            )
        for ids in known:
            model.add_task(ids)
        # Avalanche requires an optimizer; nothing is ever optimized through it (make_optimizer
        # is a no-op), the pool trains its prompts with its own optimizer.
        placeholder = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
        super().__init__(
            model=model,
            optimizer=placeholder,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=pool.training.batch_size,
            train_epochs=pool.training.epochs,
            eval_mb_size=eval_mb_size,
            device="cpu",  # the pool computes on the CPU
            plugins=list(plugins) if plugins else None,
            evaluator=evaluator,
            eval_every=eval_every,
        )
        self.pool = pool
        self.task_names = list(task_names) if task_names is not None else None
        self.label_names = label_names
        self.seed = seed
        self.progress = progress

    @property
    def class_ids(self) -> list[list[int]]:
        """Global class ids of each pool entry's head outputs, in entry order."""
        return [list(ids) for ids in self.model.class_ids]

    def experience_task(self, experience) -> tuple[Task, list[int]]:
        """The `Task` ``train(experience)`` learns, and its labels' global class ids."""
        benchmark = getattr(getattr(experience, "origin_stream", None), "benchmark", None)
        info = benchmark_info(benchmark)
        if info is not None and info.pad_id != self.model.pad_id:
            raise ContinualError(
                f"the benchmark pads with id {info.pad_id} but the pool's tokenizer with "
                f"{self.model.pad_id}: build the benchmark with the pool's backbone"
            )
        index = experience.current_experience
        if self.task_names is not None:
            name = self.task_names[index]
        elif info is not None:
            name = info.task_names[index]
        else:
            name = f"experience_{index}"
        return _experience_task(
            name,
            experience,
            self.pool.backbone.tokenizer,
            _label_namer(self.label_names, info),
            valid_experience=_matching(getattr(benchmark, "valid_stream", None), index),
            order=info.class_ids[index] if info else None,
        )

    # -- Avalanche hooks ---------------------------------------------------------------------
    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        task, class_ids = self.experience_task(experience)
        self.pool.learn(task, seed=self.seed, progress=self.progress)
        self.model.add_task(class_ids)

    def make_optimizer(self, **kwargs) -> None:
        """Nothing to do: the pool's training builds its own optimizer for each new prompt."""

    def forward(self):
        # Never pass task labels: routing them is the pool's job.
        return self.model(self.mb_x)

    def _before_eval_exp(self, **kwargs) -> None:
        # Output columns must cover the experience's classes even before they are learned, so
        # that the "refused" column never coincides with a real class id.
        classes = getattr(self.experience, "classes_in_this_experience", None)
        if classes:
            self.model.min_outputs = max(self.model.min_outputs, max(classes) + 1)
        super()._before_eval_exp(**kwargs)
