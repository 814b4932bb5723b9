"""The shared training loop: named steps, hooks, early stopping that restores the epoch it
records, and other task kinds plugged in through `TaskSteps`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from continual import distributed
from continual.errors import ContinualError
from continual.trainer import EarlyStopping, Hook, Trainer, check_seed, weighted_loss


class RegressionSteps:
    """A task kind other than classification: a linear regression with a squared loss and a
    scripted validation score (so the epoch early stopping keeps is known in advance)."""

    def __init__(self, scores: list[float]) -> None:
        torch.manual_seed(0)
        self.module = nn.Linear(1, 1)
        self.scores = list(scores)
        self.batches: list[list[float]] = []

    def batch(self, examples):
        self.batches.append([x for x, _ in examples])
        return torch.tensor([[x] for x, _ in examples]), torch.tensor([[y] for _, y in examples])

    def forward(self, model, batch):
        return model(batch[0])

    def loss(self, output, batch, row_weights):
        return weighted_loss(((output - batch[1]) ** 2).squeeze(1), row_weights)

    def score(self, examples):
        return self.scores.pop(0) * len(examples), len(examples)


class Snapshots(Hook):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.weights: dict[int, torch.Tensor] = {}

    def before_training(self, trainer):
        self.events.append("before")

    def after_step(self, trainer, loss):
        assert loss >= 0
        self.events.append(f"step {trainer.epoch}.{trainer.step}")

    def after_epoch(self, trainer, epoch, score):
        self.weights[epoch] = trainer.steps.module.weight.detach().clone()
        self.events.append(f"epoch {epoch} {score}")

    def after_training(self, trainer):
        self.events.append("after")


def make_trainer(steps, hooks=(), patience=2, epochs=6, seed=0):
    optimizer = torch.optim.SGD(steps.module.parameters(), lr=0.1)
    return Trainer(
        steps,
        optimizer,
        epochs=epochs,
        batch_size=2,
        patience=patience,
        generator=torch.Generator().manual_seed(seed),
        device=torch.device("cpu"),
        hooks=hooks,
    )


TRAIN = [(x / 4, 2 * x / 4 + 1) for x in range(5)]


def test_the_loop_runs_its_steps_in_order_and_restores_the_best_epoch():
    steps = RegressionSteps([0.5, 0.8, 0.6, 0.7, 0.9, 1.0])
    hook = Snapshots()
    result = make_trainer(steps, [hook]).fit(TRAIN, validation=[(0.0, 1.0)])
    # Epoch 2 scored best; epochs 3 and 4 did not beat it, so patience 2 stopped after 4.
    assert (result.epochs_run, result.best_epoch, result.best_score) == (4, 2, 0.8)
    assert hook.events[0] == "before" and hook.events[-1] == "after"
    assert hook.events[1:5] == ["step 1.1", "step 1.2", "step 1.3", "epoch 1 0.5"]
    assert torch.equal(steps.module.weight.detach(), hook.weights[2])
    assert not torch.equal(hook.weights[2], hook.weights[4])  # training moved on, then went back


def test_without_validation_every_epoch_runs_and_the_last_is_kept():
    steps = RegressionSteps([])
    hook = Snapshots()
    result = make_trainer(steps, [hook], epochs=3).fit(TRAIN)
    assert (result.epochs_run, result.best_epoch, result.best_score) == (3, 3, None)
    assert torch.equal(steps.module.weight.detach(), hook.weights[3])


def test_the_order_is_seeded_and_covers_every_row_each_epoch():
    orders = []
    for _ in range(2):
        steps = RegressionSteps([])
        make_trainer(steps, epochs=2, seed=7).fit(TRAIN)
        orders.append(steps.batches)
    assert orders[0] == orders[1]
    first_epoch = sorted(x for batch in orders[0][:3] for x in batch)
    assert first_epoch == [x for x, _ in TRAIN]
    other = RegressionSteps([])
    make_trainer(other, epochs=2, seed=8).fit(TRAIN)
    assert other.batches != orders[0]


def test_a_step_is_overridable_in_a_subclass():
    class L1(Trainer):
        def loss(self, output, batch, row_weights=None):
            return F.l1_loss(output, batch[1])

    steps = RegressionSteps([])
    trainer = L1(
        steps,
        torch.optim.SGD(steps.module.parameters(), lr=0.1),
        epochs=1,
        batch_size=5,
        patience=0,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    before = steps.module.bias.detach().clone()
    batch = steps.batch(TRAIN)
    expected = F.l1_loss(steps.module(batch[0]), batch[1]).item()
    assert trainer.training_step(batch) == pytest.approx(expected)
    # Every output is below its target (y = 2x + 1 >= 1 > the random line's outputs), so the
    # L1 gradient of the bias is -1 exactly and SGD moves it by the learning rate (a squared
    # loss would move it by 2 * the mean gap).
    assert float(steps.module.bias.detach() - before) == pytest.approx(0.1, abs=1e-6)


def test_a_hook_that_raises_ends_training_and_closes_up():
    class Enough(Exception):
        pass

    class Stop(Snapshots):
        def after_epoch(self, trainer, epoch, score):
            super().after_epoch(trainer, epoch, score)
            raise Enough

    hook = Stop()
    with pytest.raises(Enough):
        make_trainer(RegressionSteps([]), [hook]).fit(TRAIN)
    assert hook.events[-1] == "after" and len(hook.weights) == 1


def test_early_stopping_with_patience_zero_never_stops_but_keeps_the_best():
    module = nn.Linear(1, 1)
    stopping = EarlyStopping(0)
    assert not stopping.update(1, 0.9, module)
    best = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.add_(1.0)
    assert not any(stopping.update(epoch, 0.1, module) for epoch in range(2, 20))
    stopping.restore(module)
    assert torch.equal(module.weight.detach(), best) and stopping.best_epoch == 1


def test_seeds_out_of_range_are_refused_by_name():
    assert check_seed(2**63 - 1) == 2**63 - 1
    for bad in (-1, 2**63, 1.0, True, "3"):
        with pytest.raises(ContinualError, match="--seed must be an integer"):
            check_seed(bad, "--seed")


def test_a_single_process_trains_without_a_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    trainer = make_trainer(RegressionSteps([]))
    assert not trainer.parallel and trainer.model is trainer.steps.module
    assert not distributed.active()
