"""Avalanche's Naive/EWC/LwF/Replay baselines behind the benchmark's method protocol."""

from __future__ import annotations

import pytest
import torch

import continual
from continual import Backbone
from continual.bench.avalanche_baselines import AvalancheMethod


@pytest.mark.parametrize("strategy", ["naive", "ewc"])
def test_avalanche_method_learns_two_tasks(
    avalanche_backbone: Backbone, strategy: str, avalanche_tasks: list
) -> None:
    tasks = avalanche_tasks
    method = AvalancheMethod(strategy, avalanche_backbone, epochs=2, batch_size=4, progress=False)
    frozen = {k: v.clone() for k, v in avalanche_backbone.model.state_dict().items()}
    assert method.evaluate(tasks[1]).accuracy == 0.0  # not learned yet: no outputs for it
    method.learn(tasks[0])
    method.learn(tasks[1])
    for task in tasks:
        score = method.evaluate(task)
        assert 0.0 <= score.accuracy <= 100.0 and score.routing_accuracy is None
    # One output per class of both tasks; the encoder was trained, the backbone left alone.
    assert method.model.classifier.classifier.out_features == 5
    assert method.classes[2:] == [("food", "meh"), ("food", "yuck"), ("food", "yum")]
    changed = [
        not torch.equal(p, frozen[k])
        for k, p in method.model.encoder.state_dict().items()
        if k in frozen and p.is_floating_point()
    ]
    assert any(changed)
    assert all(torch.equal(v, frozen[k]) for k, v in avalanche_backbone.model.state_dict().items())
    cost = method.cost()
    assert cost.trainable_parameters == sum(p.numel() for p in method.model.parameters())
    assert cost.bytes_per_task >= 4 * cost.trainable_parameters
    with pytest.raises(continual.TaskDataError):
        method.learn(tasks[0])
