"""Metrics against small matrices whose values were worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from continual.metrics import (
    as_accuracy_matrix,
    avalanche_forgetting,
    average_accuracy,
    average_accuracy_curve,
    backward_transfer,
    forgetting,
    forgetting_per_task,
    format_bytes,
    forward_transfer,
    mean_std,
    summarize,
)

NAN = float("nan")

# Upper triangle unmeasured. Task 0 peaks after task 1 (95), so Chaudhry forgetting (max over
# time) and BWT (diagonal only) differ: a sign/definition mix-up cannot pass both checks.
R = [
    [90.0, NAN, NAN],
    [95.0, 85.0, NAN],
    [70.0, 75.0, 95.0],
]

# Fully measured: the superdiagonal feeds forward transfer; R[0][1] = 99 and R[0][2] = 98 are
# above the diagonal and must not leak into forgetting's max.
R_FULL = [
    [90.0, 99.0, 98.0],
    [95.0, 85.0, 50.0],
    [70.0, 75.0, 95.0],
]
BASELINE = [33.0, 35.0, 20.0]


def test_average_accuracy_is_mean_of_last_row() -> None:
    # (70 + 75 + 95) / 3
    assert average_accuracy(R) == pytest.approx(80.0)


def test_average_accuracy_curve_uses_learned_tasks_only() -> None:
    # [90], [95, 85], [70, 75, 95]
    assert average_accuracy_curve(R) == pytest.approx([90.0, 90.0, 80.0])


def test_forgetting_uses_the_best_earlier_accuracy() -> None:
    # task 0: max(90, 95) - 70 = 25; task 1: 85 - 75 = 10
    assert forgetting_per_task(R) == pytest.approx([25.0, 10.0])
    assert forgetting(R) == pytest.approx(17.5)


def test_backward_transfer_uses_the_diagonal() -> None:
    # ((70 - 90) + (75 - 85)) / 2
    assert backward_transfer(R) == pytest.approx(-15.0)


def test_avalanche_forgetting_is_minus_bwt() -> None:
    assert avalanche_forgetting(R) == pytest.approx(15.0)
    assert avalanche_forgetting(R) == -backward_transfer(R)
    assert avalanche_forgetting(R_FULL) == -backward_transfer(R_FULL)


def test_forward_transfer_uses_the_superdiagonal() -> None:
    # ((99 - 35) + (50 - 20)) / 2
    assert forward_transfer(R_FULL, BASELINE) == pytest.approx(47.0)


def test_forward_transfer_without_baseline_is_none() -> None:
    assert forward_transfer(R_FULL, None) is None
    assert forward_transfer(R, None) is None  # no superdiagonal needed when nothing is computed


def test_forward_transfer_ignores_first_baseline_entry() -> None:
    assert forward_transfer(R_FULL, [None, 35.0, 20.0]) == pytest.approx(47.0)
    assert forward_transfer(R_FULL, [NAN, 35.0, 20.0]) == pytest.approx(47.0)


def test_finite_upper_triangle_does_not_change_other_metrics() -> None:
    # R_FULL equals R on and below the diagonal.
    assert average_accuracy(R_FULL) == average_accuracy(R)
    assert average_accuracy_curve(R_FULL) == average_accuracy_curve(R)
    assert forgetting_per_task(R_FULL) == forgetting_per_task(R)
    assert backward_transfer(R_FULL) == backward_transfer(R)


def test_none_above_diagonal_reads_as_unmeasured() -> None:
    with_none = [[90.0, None, None], [95.0, 85.0, None], [70.0, 75.0, 95.0]]
    assert summarize(with_none) == summarize(R)


def test_summarize_keys_and_values() -> None:
    summary = summarize(R_FULL, BASELINE)
    assert summary == pytest.approx(
        {"average_accuracy": 80.0, "forgetting": 17.5, "bwt": -15.0, "fwt": 47.0}
    )
    assert all(isinstance(value, float) for value in summary.values())
    assert summarize(R)["fwt"] is None


def test_metrics_are_unit_agnostic() -> None:
    fractions = np.array(R_FULL) / 100
    summary = summarize(fractions, np.array(BASELINE) / 100)
    assert summary == pytest.approx(
        {"average_accuracy": 0.8, "forgetting": 0.175, "bwt": -0.15, "fwt": 0.47}
    )


def test_single_task() -> None:
    single = [[80.0]]
    assert average_accuracy(single) == 80.0
    assert average_accuracy_curve(single) == [80.0]
    assert forgetting_per_task(single) == []
    assert forgetting(single) is None
    assert backward_transfer(single) is None
    assert avalanche_forgetting(single) is None
    assert forward_transfer(single, [50.0]) is None
    assert summarize(single, [50.0]) == {
        "average_accuracy": 80.0,
        "forgetting": None,
        "bwt": None,
        "fwt": None,
    }


def test_numpy_input_and_python_floats_out() -> None:
    value = average_accuracy(np.array(R, dtype=np.float32))
    assert type(value) is float
    assert value == pytest.approx(80.0)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "square"),
        ([1.0, 2.0], "square"),
        ([], "square"),
        (np.zeros((0, 0)), "empty"),
        ([[90.0, NAN], [NAN, 80.0]], r"R\[1\]\[0\]"),
        ([[NAN, NAN], [70.0, 80.0]], r"R\[0\]\[0\]"),
        ([[90.0, float("inf")], [70.0, 80.0]], "infinite"),
        ([[90.0, NAN], [70.0, -float("inf")]], "infinite"),
        ([["a", "b"], ["c", "d"]], "numbers"),
    ],
)
def test_invalid_matrix_raises(matrix: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_accuracy_matrix(matrix)
    with pytest.raises(ValueError, match=message):
        summarize(matrix)


def test_forward_transfer_needs_the_superdiagonal() -> None:
    with pytest.raises(ValueError, match=r"R\[0\]\[1\]"):
        forward_transfer(R, BASELINE)


def test_forward_transfer_validates_baseline() -> None:
    with pytest.raises(ValueError, match="one accuracy per task"):
        forward_transfer(R_FULL, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"baseline\[2\]"):
        forward_transfer(R_FULL, [1.0, 2.0, NAN])
    with pytest.raises(ValueError, match="numbers"):
        forward_transfer(R_FULL, ["x", "y", "z"])


def test_mean_std_population() -> None:
    result = mean_std([1.0, 2.0, 3.0, None])
    assert result["mean"] == pytest.approx(2.0)
    assert result["std"] == pytest.approx(math.sqrt(2 / 3))  # ddof=0
    assert mean_std([5.0]) == {"mean": 5.0, "std": 0.0}


def test_mean_std_missing() -> None:
    assert mean_std([None, None]) == {"mean": None, "std": None}
    assert mean_std([]) == {"mean": None, "std": None}


def test_mean_std_rejects_nan() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        mean_std([1.0, NAN])


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (999, "999 B"),
        (999.6, "1.0 KB"),
        (1000, "1.0 KB"),
        (12_300, "12.3 KB"),
        (999_960, "1.0 MB"),
        (87_100_000, "87.1 MB"),
        (2_500_000_000, "2.5 GB"),
        (np.int64(4096), "4.1 KB"),
    ],
)
def test_format_bytes(size: float, text: str) -> None:
    assert format_bytes(size) == text


@pytest.mark.parametrize("size", [-1, NAN, float("inf"), None, True])
def test_format_bytes_rejects_nonsense(size: object) -> None:
    with pytest.raises(ValueError):
        format_bytes(size)  # type: ignore[arg-type]
