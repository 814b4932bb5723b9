"""`train_task`'s per-epoch callback."""

from __future__ import annotations

import pytest

from continual import TrainingConfig
from continual.learner import train_task


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
