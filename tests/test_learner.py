"""`train_task` on the shared loop: its per-epoch callback, the epoch it keeps, and another
loss plugged into the same loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from continual import TrainingConfig
from continual.classifier import ClassifierSteps
from continual.learner import new_classifier, param_groups, train_task
from continual.trainer import Trainer, weighted_loss


class _Enough(Exception):
    pass


def test_on_epoch_sees_every_epoch_and_can_end_training(tiny_backbone, synthetic_tasks):
    colours, _ = synthetic_tasks
    seen: list[int] = []
    config = TrainingConfig(epochs=3, patience=0)

    def record(epoch, prompt, head):
        seen.append(epoch)
        assert prompt.vectors.requires_grad and head.weight.shape[0] == len(colours.labels)

    entry = train_task(tiny_backbone, colours, 4, config, progress=False, on_epoch=record)
    assert seen == [1, 2, 3] and entry.stats["epochs_run"] == 3

    def stop(epoch, _prompt, _head):
        if epoch == 2:
            raise _Enough

    with pytest.raises(_Enough):
        train_task(tiny_backbone, colours, 4, config, progress=False, on_epoch=stop)


def test_the_entry_holds_the_weights_of_the_epoch_it_records(tiny_backbone, synthetic_tasks):
    colours, _ = synthetic_tasks
    snapshots: dict[int, torch.Tensor] = {}

    def record(epoch, prompt, head):
        snapshots[epoch] = prompt.vectors.detach().clone()

    config = TrainingConfig(epochs=4, patience=1, batch_size=16)
    entry = train_task(tiny_backbone, colours, 4, config, seed=3, progress=False, on_epoch=record)
    stats = entry.stats
    assert stats["best_epoch"] < stats["epochs_run"] == len(snapshots)  # it stopped early
    assert torch.equal(entry.prompt, snapshots[stats["best_epoch"]])
    assert not torch.equal(entry.prompt, snapshots[stats["epochs_run"]])


def test_a_generative_style_loss_plugs_into_the_same_loop(tiny_backbone, synthetic_tasks):
    """Another forward, loss and validation metric through `TaskSteps` (here: the head's
    logits scored by a margin loss and validated by the share of confident answers); the loop,
    seeding and early stopping are the ones `train_task` uses."""
    colours, _ = synthetic_tasks
    generator = torch.Generator().manual_seed(0)
    config = TrainingConfig(epochs=2, patience=0, batch_size=16)
    classifier = new_classifier(tiny_backbone, 4, colours.labels, config, generator)

    class MarginSteps(ClassifierSteps):
        def loss(self, output, batch, row_weights):
            return weighted_loss(
                F.multi_margin_loss(output, batch.targets, reduction="none"), row_weights
            )

        def score(self, examples):
            batch = self.batch(examples)
            probabilities = self.module(batch.input_ids, batch.attention_mask).softmax(1)
            return float((probabilities.max(1).values > 0.5).sum()), len(examples)

    steps = MarginSteps(tiny_backbone, classifier, colours.labels, 16)
    optimizer = torch.optim.Adam(param_groups(classifier, config))
    before = classifier.prompt.vectors.detach().clone()
    result = Trainer(
        steps,
        optimizer,
        epochs=2,
        batch_size=16,
        patience=0,
        generator=generator,
        device=tiny_backbone.device,
    ).fit(colours.train, colours.validation)
    assert result.epochs_run == 2 and 0.0 <= result.best_score <= 1.0
    assert not torch.equal(before, classifier.prompt.vectors.detach())
