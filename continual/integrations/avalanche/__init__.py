"""Avalanche (``avalanche-lib`` 0.6.0) integration: conversion and a prompt-pool strategy.

* `continual.integrations.avalanche.convert`: `tasks_to_benchmark`, `benchmark_to_tasks` and
  the token-id helpers.
* `continual.integrations.avalanche.strategy`: `PromptPoolStrategy`, an Avalanche
  ``SupervisedTemplate`` that grows a `continual.PromptPool` one experience at a time.

Importing this package imports Avalanche (seconds); ``import continual`` never does. Without
the ``avalanche`` extra it raises an ImportError naming the ``pip install`` that brings it.
"""

from ...extras import require

# Checked before Avalanche is imported, so that a missing extra is one line, not a traceback.
require("avalanche", "continual.integrations.avalanche")

from .convert import (  # noqa: E402
    INFO_ATTRIBUTE,
    BenchmarkInfo,
    attention_mask,
    benchmark_info,
    benchmark_to_tasks,
    decode_ids,
    encode_texts,
    experience_task_labels,
    experience_tensors,
    pad_token_id,
    tasks_to_benchmark,
    token_ids,
)
from .model import FLOOR_LOG_PROB, OTHER_TASK_LOGIT, PromptPoolModel  # noqa: E402
from .plugins import REFUSED_PLUGINS  # noqa: E402
from .strategy import PromptPoolStrategy  # noqa: E402

__all__ = [
    "FLOOR_LOG_PROB",
    "INFO_ATTRIBUTE",
    "OTHER_TASK_LOGIT",
    "REFUSED_PLUGINS",
    "BenchmarkInfo",
    "PromptPoolModel",
    "PromptPoolStrategy",
    "attention_mask",
    "benchmark_info",
    "benchmark_to_tasks",
    "decode_ids",
    "encode_texts",
    "experience_task_labels",
    "experience_tensors",
    "pad_token_id",
    "tasks_to_benchmark",
    "token_ids",
]
