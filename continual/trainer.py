"""One training loop for a task's trainable part, in named steps with hooks.

Every way of learning a task runs this loop: `PromptPool.learn` (through
`continual.learner.train_task`), the data-parallel path under torchrun or ``accelerate launch``,
and the Avalanche strategy, which drives the same steps and the same `EarlyStopping` from
Avalanche's own callbacks. As in Avalanche's ``BaseSGDTemplate``, the loop is split into named
steps, each a method a subclass may override::

    fit ─► training_epoch ─► training_step ─► forward ─► loss ─► backward ─► optimizer_step
        └► validation (after each epoch) ─► EarlyStopping ─► the best epoch's weights restored

What one kind of task does differently (a classifier's logits and cross-entropy, a language
model's teacher-forced loss and exact match) is a `TaskSteps` object: it makes batches, runs the
forward pass, computes the loss and scores validation examples. The loop owns the rest: the
seeded order, data-parallel shards, early stopping, progress, hooks. Randomness comes from one
seeded ``torch.Generator``; the process's global random state is neither read nor changed.

Data-parallel (`continual.distributed`): every process draws the same seeded order and takes
every ``world_size``-th row of each global batch of ``batch_size`` rows, DistributedDataParallel
averages the gradients, and every process scores its share of the validation split; so early
stopping decides the same everywhere and every process ends with the weights one process would
have learned (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .errors import ContinualError
from .progress import Progress

# Seeds torch.Generator.manual_seed accepts without overflow.
MAX_SEED = 2**63 - 1

# What a task kind trains on and what it batches them into: its own business.
Example = Any
Batch = Any


class TaskSteps(Protocol):
    """What one kind of task plugs into the loop."""

    @property
    def module(self) -> nn.Module:
        """The trainable part (e.g. a soft prompt and a head): what the optimizer updates,
        data-parallel training wraps and early stopping snapshots. The frozen backbone must
        not be one of its registered submodules."""
        ...

    def batch(self, examples: Sequence[Example]) -> Batch:
        """A training batch (tokenized inputs and targets, on the device) of ``examples``."""
        ...

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The output of ``model`` (``module`` or its data-parallel wrapper) on ``batch``."""
        ...

    def loss(
        self, output: torch.Tensor, batch: Batch, row_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """The batch's mean loss; with ``row_weights`` (data-parallel, one per row), the sum
        of each row's loss times its weight (`weighted_loss`)."""
        ...

    def score(self, examples: Sequence[Example]) -> tuple[float, int]:
        """Validation: the summed metric of ``examples`` (e.g. how many are right) and how
        many were scored. The epoch's score is the sum over processes divided by the count:
        a share from 0 to 1, higher is better."""
        ...


def weighted_loss(per_row: torch.Tensor, row_weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-row losses (B,), or their sum weighted by ``row_weights`` (B,)."""
    return per_row.mean() if row_weights is None else (per_row * row_weights).sum()


class EarlyStopping:
    """Keeps the best epoch's weights and says when to stop.

    `update` after each validated epoch snapshots the module when its score beats every earlier
    one and answers whether ``patience`` epochs in a row have not (0: never stop early);
    `restore` puts the best epoch's weights back, so the entry holds the epoch it records.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_score: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale = 0

    def update(self, epoch: int, score: float, module: nn.Module) -> bool:
        """Record ``epoch``'s validation ``score``; True when training should stop now."""
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            self.stale += 1
        return bool(self.patience) and self.stale >= self.patience

    def restore(self, module: nn.Module) -> None:
        """Load the best epoch's weights into ``module`` (nothing if no epoch was validated)."""
        if self.best_state is not None:
            with torch.no_grad():
                module.load_state_dict(self.best_state)


class Hook:
    """Called at the loop's events, as Avalanche's plugins are; override what you need.

    An exception a hook raises ends training there.
    """

    def before_training(self, trainer: Trainer) -> None:
        """Before the first epoch."""

    def after_step(self, trainer: Trainer, loss: float) -> None:
        """After each optimizer step; ``loss`` is the global batch's mean loss."""

    def after_epoch(self, trainer: Trainer, epoch: int, score: float | None) -> None:
        """After each epoch (1-based) and its validation (``score``; None without one)."""

    def after_training(self, trainer: Trainer) -> None:
        """After the last epoch, or when training ends early or fails."""


class ProgressHook(Hook):
    """A progress bar over every step, the running loss and each epoch's validation score."""

    def __init__(self, description: str, *, enabled: bool = True) -> None:
        self.description = description
        self.enabled = enabled
        self.bar: Progress | None = None
        self.total = 0.0

    def before_training(self, trainer: Trainer) -> None:
        steps = trainer.epochs * trainer.steps_per_epoch
        self.bar = Progress(steps, self.description, enabled=self.enabled)

    def after_step(self, trainer: Trainer, loss: float) -> None:
        assert self.bar is not None
        self.total = (0.0 if trainer.step == 1 else self.total) + loss
        self.bar.update(1, loss=f"{self.total / trainer.step:.3f}")

    def after_epoch(self, trainer: Trainer, epoch: int, score: float | None) -> None:
        assert self.bar is not None
        shown = {} if score is None else {"val": f"{score:.1%}"}
        self.bar.checkpoint(f"epoch {epoch}/{trainer.epochs}", **shown)

    def after_training(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class TrainingResult:
    """What a run of the loop did.

    Attributes:
        epochs_run: epochs trained (fewer than asked when early stopping ended training).
        best_epoch: the epoch whose weights the module holds now (the last without validation).
        best_score: that epoch's validation score, None without validation.
    """

    epochs_run: int
    best_epoch: int
    best_score: float | None


class Trainer:
    """The training loop over one task's `TaskSteps`.

    Args:
        steps: the task kind's batch, forward, loss and score.
        optimizer: over ``steps.module``'s trainable parameters.
        epochs: passes over the training examples at most.
        batch_size: rows per (global) batch.
        patience: validated epochs without improvement before stopping (0: never).
        generator: the seeded source of every epoch's order.
        device: where the module runs (the backend of the process group follows it).
        hooks: called at the loop's events, in order.
    """

    def __init__(
        self,
        steps: TaskSteps,
        optimizer: torch.optim.Optimizer,
        *,
        epochs: int,
        batch_size: int,
        patience: int,
        generator: torch.Generator,
        device: torch.device,
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.steps = steps
        self.optimizer = optimizer
        self.epochs = epochs
        self.batch_size = batch_size
        self.generator = generator
        self.device = device
        self.hooks = list(hooks)
        self.early_stopping = EarlyStopping(patience)
        self.parallel = distributed.init(device)
        self.model: nn.Module = steps.module
        if self.parallel:
            # Every rank built the same module from the same seed; DDP also broadcasts rank
            # 0's copy at this point, so they start identical whatever happened before.
            device_ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(steps.module, device_ids=device_ids)
        self.steps_per_epoch = 0
        self.epoch = 0  # 1-based once training runs
        self.step = 0  # within the epoch, 1-based once it runs

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, train: Sequence[Example], validation: Sequence[Example] = ()) -> TrainingResult:
        """Train on ``train``, validating on ``validation`` after each epoch (none: the last
        epoch is kept), and leave the best epoch's weights in ``steps.module``."""
        self.steps_per_epoch = math.ceil(len(train) / self.batch_size)
        for hook in self.hooks:
            hook.before_training(self)
        try:
            for epoch in range(1, self.epochs + 1):
                self.epoch = epoch
                self.training_epoch(train)
                score = self.validation(validation) if validation else None
                stop = score is not None and self.early_stopping.update(
                    epoch, score, self.steps.module
                )
                for hook in self.hooks:
                    hook.after_epoch(self, epoch, score)
                if stop:
                    break
        finally:
            for hook in self.hooks:
                hook.after_training(self)
        self.early_stopping.restore(self.steps.module)
        distributed.check_same(self.steps.module.state_dict().values(), "trained weights")
        best = self.early_stopping
        return TrainingResult(
            epochs_run=self.epoch,
            best_epoch=best.best_epoch if best.best_state is not None else self.epoch,
            best_score=best.best_score,
        )

    def epoch_order(self, size: int) -> torch.Tensor:
        """The order of an epoch's ``size`` training rows, from the seeded generator."""
        return torch.randperm(size, generator=self.generator)

    def training_epoch(self, train: Sequence[Example]) -> None:
        """One pass over ``train`` in a seeded order, one optimizer step per global batch."""
        order = self.epoch_order(len(train))
        ranks, me = distributed.world_size(), distributed.rank()
        for step in range(self.steps_per_epoch):
            self.step = step + 1
            rows = order[step * self.batch_size : (step + 1) * self.batch_size]
            weights = None
            if self.parallel:
                rows, weights = shard(rows, ranks, me, self.device)
            batch = self.steps.batch([train[i] for i in rows])
            loss = self.training_step(batch, weights)
            if self.parallel:  # the global batch's mean loss, for the hooks
                loss = distributed.all_sum([loss], self.device)[0]
            for hook in self.hooks:
                hook.after_step(self, loss)

    def training_step(self, batch: Batch, row_weights: torch.Tensor | None = None) -> float:
        """Forward, loss, backward and update on one batch; returns the loss (this process's
        part of the global batch's mean when data-parallel)."""
        output = self.forward(batch)
        loss = self.loss(output, batch, row_weights)
        objective = loss
        if row_weights is not None:
            # DDP averages the gradients of the processes, whose shares of the mean loss add
            # up: scaling by their number makes the average the gradient of the global mean.
            objective = loss * distributed.world_size()
        self.backward(objective)
        self.optimizer_step()
        return loss.item()

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.steps.forward(self.model, batch)

    def loss(
        self, output: torch.Tensor, batch: Batch, row_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.steps.loss(output, batch, row_weights)

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss.backward()

    def optimizer_step(self) -> None:
        self.optimizer.step()

    @torch.no_grad()
    def validation(self, examples: Sequence[Example]) -> float:
        """The validation score: each process scores its share, the summed counts give every
        process the same score, so early stopping decides the same everywhere."""
        ranks, me = distributed.world_size(), distributed.rank()
        total, seen = distributed.all_sum(self.steps.score(examples[me::ranks]), self.device)
        return total / max(seen, 1)


def shard(
    rows: torch.Tensor, ranks: int, rank: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of a global batch, every ``ranks``-th from ``rank``, and their weights.

    Each row weighs 1 / the global batch's size, so the shares' losses add up to the batch's
    mean. A share may be empty (a last batch with fewer rows than ranks); DDP still needs a
    backward pass from every rank, so it gets the batch's first row with weight 0.
    """
    share = rows[rank::ranks]
    weights = torch.full((len(share),), 1.0 / len(rows), device=device)
    if len(share) == 0:
        share, weights = rows[:1], torch.zeros(1, device=device)
    return share, weights


def trainable_parameters(module: nn.Module) -> int:
    """How many numbers of ``module`` the optimizer trains."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is an integer in 0..2**63-1; a `ContinualError` naming ``name`` if not."""
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise ContinualError(f"{name} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed
