"""The selector interface: route every input, with no task id given, to the task whose prompt
should serve it.

A selector is stateless about tasks. ``fit_task`` turns one task's query features into a small
per-task state (prototypes, a key, a mean and covariance factors) that the pool stores in that
task's entry; ``route`` reads the states of all tasks. So learning a new task never touches what
earlier tasks stored, and no raw training data is kept: only statistics of the frozen backbone's
features. The implementations live in `similarity_selectors` and `gaussian_selector`; the
registry that builds one from its saved config is `selector`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .entry import State
from .errors import ContinualError

UNKNOWN_TASK = -1  # route() answer for an input that matches no task well enough


class Selector:
    """The interface every selector implements."""

    name: str = "selector"
    #: Route on the query layer's and the last layer's features side by side (2H wide).
    with_last: bool = False

    def training_texts(self, texts: Sequence[str]) -> list[str]:
        """The texts whose query features ``fit_task`` sees for a task: by default, as given."""
        return list(texts)

    def fit_task(self, queries: torch.Tensor, previous: list[State], seed: int = 0) -> State:
        """Per-task state from the new task's query features (N, H)."""
        raise NotImplementedError

    def task_scores(self, queries: torch.Tensor, states: list[State]) -> torch.Tensor:
        """How well each input matches each task: (B, H) → (B, T), higher is better."""
        raise NotImplementedError

    def own_scores(self, queries: torch.Tensor, state: State) -> torch.Tensor:
        """How well each input (B, H) matches one task judged by its state alone: (B,).

        Unlike `task_scores`, no other task enters, so the score of an input never changes
        as tasks are added: calibrated refusal compares it with the task's held-out scores.
        """
        return self.task_scores(queries, [state])[:, 0]

    def prepare(self, states: list[State]) -> None:
        """Build what routing over ``states`` needs ahead of the first batch (by default,
        nothing): a loaded pool calls it, so its first routed batch costs what the next do."""

    def route(
        self, queries: torch.Tensor, states: list[State]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Task index (B,) and score (B,) per input; `UNKNOWN_TASK` where refused."""
        if not states:
            raise ContinualError("the pool has no task yet: learn one before predicting")
        scores = self.task_scores(queries, states)
        best, task = scores.max(dim=1)
        threshold = getattr(self, "min_score", None)
        if threshold is not None:
            task = torch.where(best >= threshold, task, torch.full_like(task, UNKNOWN_TASK))
        return task, best

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings, written to a saved pool's manifest."""
        return {"name": self.name}

    def state_shapes(self, hidden: int) -> dict[str, tuple[int, ...]]:
        """The tensors a task's state holds and their shapes (-1: any size)."""
        return {}

    def check_state(self, state: State, hidden: int) -> str | None:
        """Why ``state`` cannot serve this selector, or None when it fits."""
        return self._check_shapes(state, self.state_shapes(hidden))

    def _check_shapes(self, state: State, expected: dict[str, tuple[int, ...]]) -> str | None:
        if set(state) != set(expected):
            return (
                f"selector state holds {sorted(state)}, the {self.name} selector needs "
                f"{sorted(expected)}"
            )
        for key, shape in expected.items():
            actual = tuple(state[key].shape)
            if len(actual) != len(shape) or any(e not in (-1, a) for e, a in zip(shape, actual)):
                return f"selector state {key!r} has shape {actual}, expected {shape}"
            if shape and shape[0] == -1 and actual[0] == 0:
                return f"selector state {key!r} is empty"
        return None


def check_min_score(min_score: object) -> float | None:
    if min_score is None:
        return None
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)):
        raise ContinualError(f"min_score must be a number or None, got {min_score!r}")
    return float(min_score)
