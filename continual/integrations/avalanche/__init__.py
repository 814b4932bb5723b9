"""Avalanche (``avalanche-lib`` 0.6.0) integration: conversion and a prompt-pool strategy.

* `continual.integrations.avalanche.convert`: `tasks_to_benchmark`, `benchmark_to_tasks` and
  the token-id helpers.
* `continual.integrations.avalanche.strategy`: `PromptPoolStrategy`, an Avalanche
  ``SupervisedTemplate`` that grows a `continual.PromptPool` one experience at a time.

Importing this package imports Avalanche (seconds); ``import continual`` never does.
"""

from .convert import (
    INFO_ATTRIBUTE,
    BenchmarkInfo,
    attention_mask,
    benchmark_info,
    benchmark_to_tasks,
    decode_ids,
    encode_texts,
    experience_classes,
    experience_task_labels,
    experience_tensors,
    pad_token_id,
    tasks_to_benchmark,
)
from .strategy import (
    FLOOR_LOG_PROB,
    OTHER_TASK_LOGIT,
    Candidate,
    PromptPoolModel,
    PromptPoolStrategy,
)

__all__ = [
    "FLOOR_LOG_PROB",
    "INFO_ATTRIBUTE",
    "OTHER_TASK_LOGIT",
    "BenchmarkInfo",
    "Candidate",
    "PromptPoolModel",
    "PromptPoolStrategy",
    "attention_mask",
    "benchmark_info",
    "benchmark_to_tasks",
    "decode_ids",
    "encode_texts",
    "experience_classes",
    "experience_task_labels",
    "experience_tensors",
    "pad_token_id",
    "tasks_to_benchmark",
]
