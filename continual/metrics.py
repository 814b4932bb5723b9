"""Continual-learning metrics from an accuracy matrix, plus small formatting helpers.

The accuracy matrix ``R`` is T x T: ``R[i][j]`` is the accuracy on task j after learning task i.
Every function is unit-agnostic: percentages in, percentages out; fractions in, fractions out.

Conventions (1-based task indices i, j, l in 1..T, as in the papers; the code indexes the
array from 0, so "R[T]" below is the last row ``R[T - 1]`` in Python):

- A_T = mean over j <= T of R[T][j]                                    -> ``average_accuracy(R)``
  A_i = mean over j <= i of R[i][j], after every task i                -> ``average_accuracy_curve(R)``
- F_T = mean over j < T of (max over l < T of R[l][j]) - R[T][j];
  positive means forgotten (Chaudhry et al. 2018)                      -> ``forgetting(R)``
  (per task: ``forgetting_per_task(R)``). Undefined for a single task: None.
  The max runs over j <= l < T only: a row l < j was measured before task j was learned, so
  it is not knowledge that could be forgotten (and is usually NaN anyway).
- BWT = mean over j < T of R[T][j] - R[j][j] (Lopez-Paz & Ranzato 2017) -> ``backward_transfer(R)``
  Avalanche's bwt_metrics is the same quantity. Avalanche's forgetting_metrics per task is
  R[j][j] - R[T][j], i.e. -BWT per task; ``avalanche_forgetting(R)`` = mean over j < T of
  R[j][j] - R[T][j] = -BWT, so results can be compared with Avalanche's.
  Both are None for a single task.
- FWT = mean over j >= 2 of R[j-1][j] - b[j], b[j] the accuracy of the untrained model on
  task j                                                                -> ``forward_transfer(R, baseline)``
  None when baseline is None (or for a single task, where no j >= 2 exists).

Entries above the diagonal (tasks not yet learned) may be NaN; they are ignored by every
metric except FWT, which reads the first superdiagonal R[j-1][j]. Every entry a metric reads
must be finite; anything else raises ValueError naming the cell.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ContinualError
from .extras import require

ArrayLike = Any  # nested sequences or an ndarray; numpy does the checking

_BYTE_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def as_accuracy_matrix(R: ArrayLike) -> np.ndarray:
    """Return ``R`` as a float T x T array after checking it can be used by the metrics.

    Raises ValueError if ``R`` is not a non-empty square matrix of numbers, if an entry on or
    below the diagonal is not finite, or if any entry is infinite. NaN (or None) is accepted
    above the diagonal, where it means "not measured yet".
    """
    try:
        matrix = np.array(R, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"accuracy matrix must contain only numbers: {error}") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"accuracy matrix must be square (T x T), got shape {matrix.shape}")
    if matrix.shape[0] == 0:
        raise ValueError("accuracy matrix is empty: at least one task is needed")
    if np.isinf(matrix).any():
        i, j = np.argwhere(np.isinf(matrix))[0]
        raise ValueError(f"accuracy matrix has an infinite entry at R[{i}][{j}]")
    lower = np.tril(np.ones(matrix.shape, dtype=bool))
    bad = lower & np.isnan(matrix)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"accuracy matrix entry R[{i}][{j}] (task {j} after learning task {i}) is NaN; "
            "entries on or below the diagonal must be measured"
        )
    return matrix


def average_accuracy(R: ArrayLike) -> float:
    """A_T: mean accuracy over all tasks after learning the last one (mean of the last row)."""
    matrix = as_accuracy_matrix(R)
    return float(matrix[-1].mean())


def average_accuracy_curve(R: ArrayLike) -> list[float]:
    """A_i for every i: mean over j <= i of R[i][j], i.e. the average accuracy so far."""
    matrix = as_accuracy_matrix(R)
    return [float(matrix[i, : i + 1].mean()) for i in range(matrix.shape[0])]


def forgetting_per_task(R: ArrayLike) -> list[float]:
    """Chaudhry forgetting of each task j < T: max over j <= l < T of R[l][j], minus R[T][j].

    Returns T - 1 values (an empty list for a single task); positive means forgotten.
    """
    matrix = as_accuracy_matrix(R)
    last = matrix.shape[0] - 1
    return [float(matrix[j:last, j].max() - matrix[last, j]) for j in range(last)]


def forgetting(R: ArrayLike) -> float | None:
    """F_T: mean Chaudhry forgetting over the tasks before the last; None for a single task."""
    values = forgetting_per_task(R)
    return float(np.mean(values)) if values else None


def backward_transfer(R: ArrayLike) -> float | None:
    """BWT: mean over j < T of R[T][j] - R[j][j]; negative means forgotten. None for one task."""
    matrix = as_accuracy_matrix(R)
    last = matrix.shape[0] - 1
    if last == 0:
        return None
    return float(np.mean([matrix[last, j] - matrix[j, j] for j in range(last)]))


def avalanche_forgetting(R: ArrayLike) -> float | None:
    """Avalanche's forgetting averaged over j < T: mean of R[j][j] - R[T][j], equal to -BWT."""
    bwt = backward_transfer(R)
    # Computed from BWT so that the documented identity holds exactly, not just to rounding.
    return None if bwt is None else -bwt


def forward_transfer(R: ArrayLike, baseline: Sequence[float | None] | None) -> float | None:
    """FWT: mean over j >= 2 (1-based) of R[j-1][j] - b[j], b[j] the untrained model's accuracy.

    ``baseline`` has one entry per task; its first entry is never read and may be None.
    Returns None when ``baseline`` is None or there is a single task. Raises ValueError when
    a superdiagonal entry R[j-1][j] or a used baseline entry is missing or not finite.
    """
    matrix = as_accuracy_matrix(R)
    if baseline is None:
        return None
    tasks = matrix.shape[0]
    try:
        base = np.array(baseline, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"baseline must contain only numbers: {error}") from None
    if base.ndim != 1 or base.shape[0] != tasks:
        raise ValueError(
            f"baseline must have one accuracy per task ({tasks}), got shape {base.shape}"
        )
    if tasks == 1:
        return None
    differences = []
    for j in range(1, tasks):
        if not math.isfinite(matrix[j - 1, j]):
            raise ValueError(
                f"forward transfer needs R[{j - 1}][{j}] (task {j} measured after learning "
                f"task {j - 1}, before learning it) but it is not finite"
            )
        if not math.isfinite(base[j]):
            raise ValueError(f"forward transfer needs baseline[{j}] but it is not finite")
        differences.append(matrix[j - 1, j] - base[j])
    return float(np.mean(differences))


def summarize(
    R: ArrayLike, baseline: Sequence[float | None] | None = None
) -> dict[str, float | None]:
    """All headline metrics of one run: keys average_accuracy, forgetting, bwt, fwt."""
    return {
        "average_accuracy": average_accuracy(R),
        "forgetting": forgetting(R),
        "bwt": backward_transfer(R),
        "fwt": forward_transfer(R, baseline),
    }


def mean_std(values: Iterable[float | None]) -> dict[str, float | None]:
    """Mean and population standard deviation (ddof=0) across seeds; None entries are ignored.

    All-None (or empty) input gives {"mean": None, "std": None}. A NaN or infinite entry
    raises ValueError rather than silently poisoning the aggregate.
    """
    kept = [float(value) for value in values if value is not None]
    if not kept:
        return {"mean": None, "std": None}
    if not all(math.isfinite(value) for value in kept):
        raise ValueError(
            f"mean_std got a non-finite value among {kept}; use None for a missing run"
        )
    array = np.array(kept)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=0))}


def format_bytes(n: float) -> str:
    """Human-readable size with 1000-based units (1 KB = 1000 B): "512 B", "12.3 KB", "87.1 MB"."""
    if n is None or isinstance(n, bool) or not math.isfinite(float(n)) or n < 0:
        raise ValueError(f"format_bytes needs a finite, non-negative number of bytes, got {n!r}")
    value = float(n)
    # 999.5 B would round to "1000 B"; show it as "1.0 KB" instead.
    if value < 999.5:
        return f"{round(value)} B"
    value /= 1000
    unit = 1
    # Promote while the rounded figure would read 1000.0 or more ("1000.0 KB" -> "1.0 MB").
    while unit < len(_BYTE_UNITS) - 1 and round(value, 1) >= 1000:
        value /= 1000
        unit += 1
    return f"{value:.1f} {_BYTE_UNITS[unit]}"


@dataclass(frozen=True)
class Score:
    """One method's result on one task's examples.

    Attributes:
        task: the task scored.
        examples: how many inputs.
        accuracy: % of inputs labelled right (for a routed pool: routed to ``task`` *and*
            labelled right); for a text-to-text task, the mean of its ``metric`` in points.
        routing_accuracy: % routed to ``task``; None where nothing is routed (an oracle, a
            single network).
        routed_to: how many inputs went to each task (None: refused); empty where not routed.
        metric: what ``accuracy`` measures: ``accuracy`` for a label task, else one of
            `TASK_METRICS`.
    """

    task: str
    examples: int
    accuracy: float
    routing_accuracy: float | None = None
    routed_to: dict[str | None, int] = field(default_factory=dict)
    metric: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "examples": self.examples,
            "accuracy": self.accuracy,
            "metric": self.metric,
            "routing_accuracy": self.routing_accuracy,
        }


# -- task metrics for generated text --------------------------------------------------------------
# Each is the mean over examples of a per-example score in points (0-100), so that shares of a
# split add up (data-parallel validation sums them) and a report can average them like accuracy.
TASK_METRICS: tuple[str, ...] = ("exact_match", "chrf", "rouge_l")


def exact_match(output: str, target: str) -> float:
    """100 when ``output`` equals ``target`` once surrounding and repeated spaces are dropped
    (case counts), else 0."""
    return 100.0 if " ".join(output.split()) == " ".join(target.split()) else 0.0


def chrf(output: str, target: str) -> float:
    """sacrebleu's sentence chrF (character 6-grams, beta 2), 0-100."""
    require("generate", "the chrf metric")
    from sacrebleu.metrics import CHRF

    return float(_chrf_scorer(CHRF).sentence_score(output, [target]).score)


def rouge_l(output: str, target: str) -> float:
    """rouge-score's ROUGE-L F-measure (with its Porter stemmer), in points 0-100."""
    require("generate", "the rouge_l metric")
    from rouge_score import rouge_scorer

    scorer = _rouge_scorer(rouge_scorer.RougeScorer)
    return 100.0 * float(scorer.score(target, output)["rougeL"].fmeasure)


@functools.cache
def _chrf_scorer(kind: Any) -> Any:
    return kind()


@functools.cache
def _rouge_scorer(kind: Any) -> Any:
    return kind(["rougeL"], use_stemmer=True)


def check_task_metric(name: object) -> str:
    """``name`` if it is one of `TASK_METRICS`; a `ContinualError` naming it if not."""
    if name not in TASK_METRICS:
        raise ContinualError(f"unknown metric {name!r}; use one of {', '.join(TASK_METRICS)}")
    return str(name)


def task_metric_scores(metric: str, outputs: Sequence[str], targets: Sequence[str]) -> list[float]:
    """Each output's score against its target under ``metric`` (points 0-100)."""
    score = {"exact_match": exact_match, "chrf": chrf, "rouge_l": rouge_l}[
        check_task_metric(metric)
    ]
    return [score(output, target) for output, target in zip(outputs, targets, strict=True)]
