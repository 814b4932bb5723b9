"""Typed run records survive the trip through results.json."""

from __future__ import annotations

import json

import pytest

from continual.bench.results import Cost, MethodRun


def test_a_run_round_trips_through_json():
    run = MethodRun(
        method="prompt-pool",
        order=["a", "b"],
        matrix=[[90.0, None], [88.0, 70.0]],
        routing=[[100.0, None], [95.0, 90.0]],
        train_seconds=1.5,
        peak_memory_mb=12.0,
        cost=Cost(8069, 620_000.0),
        routing_confusion={"a": {"a": 19, "b": 1}, "b": {"b": 18, "refused": 2}},
    )
    data = json.loads(json.dumps(run.to_dict()))
    assert data["trainable_parameters"] == 8069 and "cost" not in data
    assert MethodRun.from_dict(data) == run


def test_a_record_of_another_version_is_refused():
    old = {
        "method": "joint",
        "order": ["a"],
        "matrix": [[1.0]],
        "routing": None,
        "train_seconds": 1.0,
        "peak_memory_mb": 1.0,
        "trainable_parameters": 1,
        "bytes_per_task": 4.0,
        "extra": {},
    }
    with pytest.raises(TypeError):
        MethodRun.from_dict(old)
