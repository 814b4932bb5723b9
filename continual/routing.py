"""Routing and refusal: where one `predict` call collects each row's task, the thresholds of
calibrated refusal, and the answer a prediction gives."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import Example
from .entry import State, TaskEntry
from .errors import TaskDataError
from .format import pool_has, some_names
from .metrics import Score, task_metric_scores
from .selector import UNKNOWN_TASK, Selector

# Shares of a task's held-out inputs at which its calibration records the own-match score.
CALIBRATION_LEVELS: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 21))


@dataclass
class Prediction:
    """One input's answer: the routed task, its label or generated text, and how sure each
    step was."""

    text: str
    task: str | None  # None when the selector refused the input
    label: str | None  # a label task's answer
    score: float  # probability of ``label``, or the mean probability of ``output``'s tokens
    routing_score: float  # the selector's match score for ``task``
    output: str | None = None  # a text-to-text task's answer

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "task": self.task,
            "label": self.label,
            "output": self.output,
            "score": round(self.score, 6),
        }


@dataclass
class Routing:
    """Where one `predict` call collects each row's task and routing score."""

    routed: torch.Tensor  # (N,) task index, UNKNOWN_TASK for open or refused rows
    scores: torch.Tensor  # (N,)
    thresholds: list[float | None] | None  # min_score per row
    refuse: list[list[float] | None] | None  # per row: each task's own-score threshold

    @classmethod
    def start(
        cls,
        forced: torch.Tensor,
        min_score: object,
        refuse: object,
        selector: Selector,
        entries: Sequence[TaskEntry],
    ) -> Routing:
        """The routing of texts whose given tasks are ``forced`` (N,) (`UNKNOWN_TASK`: to be
        routed), with ``min_score`` and ``refuse`` as `PromptPool.predict` takes them."""
        count = len(forced)
        shares = None
        if refuse is not None:  # rows whose task is given are never refused
            shares = [
                None if forced[i] != UNKNOWN_TASK else share
                for i, share in enumerate(per_text(refuse, count, "refuse"))
            ]
        return cls(
            forced.clone(),
            torch.ones(count),
            thresholds(min_score, count) if min_score is not None else None,
            refusal_levels(selector, entries, shares),
        )

    def settle(
        self, selector: Selector, states: list[State], rows: Sequence[int], queries: torch.Tensor
    ) -> None:
        """Route ``rows`` on their query features (len(rows), F) and write the answers into
        this routing, refusing below a given ``min_score`` or the calibrated threshold."""
        found, found_scores = selector.route(queries, states)
        own = None
        if self.refuse is not None and any(self.refuse[row] is not None for row in rows):
            own = torch.full((len(rows),), float("inf"))
            for task_index in set(found.tolist()) - {UNKNOWN_TASK}:
                at = (found == task_index).nonzero().flatten()
                state = states[task_index]
                own[at] = selector.own_scores(queries[at], state).float()
        for k, (row, task_index, score) in enumerate(
            zip(rows, found.tolist(), found_scores.tolist())
        ):
            threshold = None if self.thresholds is None else self.thresholds[row]
            refused = threshold is not None and score < threshold
            levels = None if self.refuse is None else self.refuse[row]
            if own is not None and levels is not None and task_index != UNKNOWN_TASK:
                refused = refused or float(own[k]) < levels[task_index]
            self.routed[row] = UNKNOWN_TASK if refused else int(task_index)
            self.scores[row] = float(score)


def refusal_levels(
    selector: Selector, entries: Sequence[TaskEntry], shares: list[Any] | None
) -> list[list[float] | None] | None:
    """Per text, each task's own-score threshold for its ``refuse`` share (or None)."""
    if shares is None:
        return None
    found: dict[float, list[float]] = {}
    for share in shares:
        if share is None or (type(share) in (int, float) and share in found):
            continue
        found[share] = refusal_thresholds(selector, entries, share)  # checks the share first
    return [None if share is None else found[share] for share in shares]


def refusal_thresholds(
    selector: Selector, entries: Sequence[TaskEntry], share: float
) -> list[float]:
    """Each task's own-score threshold for calibrated refusal at ``share`` (0.01 to 0.2).

    Raises `TaskDataError` for a share out of range or a task without calibration.
    """
    low, high = CALIBRATION_LEVELS[0], CALIBRATION_LEVELS[-1]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not low <= share <= high:
        raise TaskDataError(f"refuse must be a share from {low} to {high}, got {share!r}")
    if selector.name == "oracle":
        raise TaskDataError("the oracle selector does not route, so it refuses nothing")
    levels = []
    for entry in entries:
        calibration = entry.stats.get("calibration")
        if calibration is None:
            raise TaskDataError(
                f"task {entry.name!r} has no routing calibration (it was learned by an "
                "older version); learn it again, or use min_score"
            )
        levels.append(float(np.interp(share, CALIBRATION_LEVELS, calibration["scores"])))
    return levels


def calibration_problem(calibration: object) -> str | None:
    """Why a recorded calibration cannot be used, or None (also when there is none)."""
    if calibration is None:
        return None
    if not isinstance(calibration, dict):
        return "must be an object"
    scores = calibration.get("scores")
    if (
        not isinstance(scores, list)
        or len(scores) != len(CALIBRATION_LEVELS)
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in scores
        )
    ):
        return f"must hold 'scores': {len(CALIBRATION_LEVELS)} finite numbers"
    if any(a > b for a, b in itertools.pairwise(scores)):
        return "must hold 'scores' that rise with the share"
    return None


def thresholds(min_score: object, count: int) -> list[float | None]:
    """One routing-score threshold (or None) per text from a number or a per-text list."""

    def check(value: object) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise TaskDataError(f"min_score must be a number, got {value!r}")
        return float(value)

    return [check(value) for value in per_text(min_score, count, "min_score")]


def per_text(value: object, count: int, name: str) -> list[Any]:
    """``value`` for each of ``count`` texts: a list of that length as given, else repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise TaskDataError(f"{len(value)} {name} values for {count} texts")
        return list(value)
    return [value] * count


def forced_tasks(
    tasks: Sequence[str | None] | str | None, names: Sequence[str], count: int
) -> torch.Tensor:
    """Each of ``count`` texts' given task as an index into ``names`` (the pool's tasks), or
    `UNKNOWN_TASK` where it is to be routed: ``tasks`` is one name, one per text, or None."""
    if tasks is None:
        return torch.full((count,), UNKNOWN_TASK, dtype=torch.long)
    given = [tasks] * count if isinstance(tasks, str) else list(tasks)
    if len(given) != count:
        raise TaskDataError(f"{len(given)} task names for {count} texts")
    unknown = sorted({name for name in given if name is not None} - set(names), key=repr)
    if unknown:
        raise TaskDataError(f"unknown task(s) {some_names(unknown)}; {pool_has(list(names))}")
    positions = {name: index for index, name in enumerate(names)}
    return torch.tensor(
        [UNKNOWN_TASK if name is None else positions[name] for name in given], dtype=torch.long
    )


def score_predictions(
    entry: TaskEntry,
    examples: Sequence[Example],
    predictions: Sequence[Prediction],
    *,
    oracle: bool,
) -> Score:
    """`PromptPool.evaluate`'s score of ``predictions`` of ``entry``'s task on ``examples``: an
    input counts only if routed to the task; text-to-text answers score by the task's metric."""
    name = entry.name
    routed = sum(p.task == name for p in predictions)
    if entry.generation is None:
        points = [
            100.0 * (p.task == name and p.label == gold)
            for p, (_, gold) in zip(predictions, examples)
        ]
    else:
        mine = [i for i, p in enumerate(predictions) if p.task == name]
        points = [0.0] * len(examples)
        found = task_metric_scores(
            entry.generation.metric,
            [predictions[i].output or "" for i in mine],
            [examples[i][1] for i in mine],
        )
        for i, value in zip(mine, found):
            points[i] = value
    return Score(
        task=name,
        examples=len(examples),
        accuracy=sum(points) / len(examples),
        routing_accuracy=None if oracle else 100.0 * routed / len(examples),
        routed_to={} if oracle else dict(Counter(p.task for p in predictions)),
        metric="accuracy" if entry.generation is None else entry.generation.metric,
    )


def calibration_record(source: str, own: torch.Tensor) -> dict[str, Any]:
    """A task's calibration from its held-out inputs' own-match scores ``own`` (N,): the score
    at each share of `CALIBRATION_LEVELS`, and where the inputs came from."""
    scores = own.double().numpy()
    return {
        "source": source,
        "examples": len(scores),
        "scores": [round(float(np.quantile(scores, level)), 6) for level in CALIBRATION_LEVELS],
    }
