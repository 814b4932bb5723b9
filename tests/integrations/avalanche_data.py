"""Avalanche datasets and benchmarks built as users build them, for the integration tests."""

from __future__ import annotations

import torch
from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.utils import DataAttribute, make_avalanche_dataset
from torch.utils.data import TensorDataset

from continual import Backbone
from continual.integrations.avalanche import encode_texts


def avalanche_dataset(ids: torch.Tensor, targets: torch.Tensor, task_label: int):
    """An Avalanche classification dataset as users build one: targets and task labels."""
    task_labels = torch.full_like(targets, task_label)
    return make_avalanche_dataset(
        TensorDataset(ids, targets),
        data_attributes=[
            DataAttribute(targets, "targets"),
            DataAttribute(task_labels, "targets_task_labels", use_in_getitem=True),
        ],
    )


def generic_benchmark(backbone: Backbone, tasks: list, *, task_labels: bool = True):
    """A benchmark from `benchmark_from_datasets` alone (no classes timeline, no extra info)."""
    streams: dict[str, list] = {"train": [], "test": [], "valid": []}
    offset = 0
    for number, task in enumerate(tasks):
        for stream, split in (
            ("train", task.train),
            ("test", task.test),
            ("valid", task.validation),
        ):
            ids = encode_texts(backbone.tokenizer, [text for text, _ in split], backbone.max_length)
            targets = torch.tensor([offset + task.label_index(label) for _, label in split])
            streams[stream].append(avalanche_dataset(ids, targets, number if task_labels else 0))
        offset += len(task.labels)
    return benchmark_from_datasets(**streams)
