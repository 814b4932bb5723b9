"""Each plot writes a readable PNG atomically and copes with missing data."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.image
import pytest

from continual.bench import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")
TASKS = ["sst2", "ag_news", "yelp"]
MATRICES = {
    "prompt-pool": [[90.0, NAN, NAN], [88.0, 85.0, NAN], [87.0, 84.0, 95.0]],
    "finetune": [[92.0, 40.0, 30.0], [50.0, 90.0, 35.0], [20.0, 45.0, 94.0]],
    "crashed": None,
}


def assert_png(path: Path, min_side: int = 200) -> None:
    """A real PNG, large enough to hold a labelled plot, not an absurd canvas."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert min_side <= width <= 6000
    assert min_side <= height <= 6000
    # Something was drawn: not a single flat colour.
    assert image.min() < image.max()


def assert_no_temp_files(directory: Path) -> None:
    leftovers = [
        name for name in os.listdir(directory) if name.endswith(".tmp") or name.startswith(".")
    ]
    assert leftovers == []


def test_plot_forgetting(tmp_path: Path) -> None:
    target = tmp_path / "forgetting.png"
    result = plots.plot_forgetting(TASKS, MATRICES, target)
    assert result == target
    assert_png(target)
    assert_no_temp_files(tmp_path)


def test_plot_accuracy_heatmaps(tmp_path: Path) -> None:
    target = tmp_path / "heatmaps.png"
    assert plots.plot_accuracy_heatmaps(TASKS, MATRICES, target) == target
    assert_png(target)
    assert_no_temp_files(tmp_path)


def test_matrix_plots_accept_str_path_and_create_directories(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "deeper" / "forgetting.png"
    result = plots.plot_forgetting(TASKS, {"only": MATRICES["prompt-pool"]}, str(target))
    assert result == target
    assert_png(target)


def test_matrix_plots_with_fractions_and_single_task(tmp_path: Path) -> None:
    fractions = {"m": [[0.9, NAN], [0.8, 0.7]]}
    assert_png(plots.plot_forgetting(["a", "b"], fractions, tmp_path / "f.png", y_max=1.0))
    assert_png(plots.plot_accuracy_heatmaps(["a", "b"], fractions, tmp_path / "h.png", y_max=1.0))
    assert_png(plots.plot_forgetting(["a"], {"m": [[80.0]]}, tmp_path / "one.png"))


def test_matrix_plots_without_any_method(tmp_path: Path) -> None:
    assert_png(plots.plot_forgetting(TASKS, {"crashed": None}, tmp_path / "f.png"))
    assert_png(plots.plot_accuracy_heatmaps(TASKS, {}, tmp_path / "h.png"))


def test_matrix_shape_must_match_task_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected \\(2, 2\\)"):
        plots.plot_forgetting(["a", "b"], {"m": MATRICES["finetune"]}, tmp_path / "f.png")
    with pytest.raises(ValueError, match="'m'"):
        plots.plot_accuracy_heatmaps(["a", "b"], {"m": [[1.0, 2.0]]}, tmp_path / "h.png")
    assert not (tmp_path / "f.png").exists()


def test_plot_accuracy_vs_forgetting(tmp_path: Path) -> None:
    summary = {
        "prompt-pool": {
            "average_accuracy": {"mean": 88.7, "std": 0.4},
            "forgetting": {"mean": 2.0, "std": 0.5},
        },
        "finetune": {
            "average_accuracy": {"mean": 53.0, "std": None},
            "forgetting": {"mean": 51.0, "std": 3.0},
        },
        "bare-numbers": {"average_accuracy": 70.0, "forgetting": 10.0},
        "single-task": {
            "average_accuracy": {"mean": 90.0, "std": 0.0},
            "forgetting": {"mean": None, "std": None},
        },
        "crashed": None,
    }
    target = tmp_path / "acc_vs_forgetting.png"
    assert plots.plot_accuracy_vs_forgetting(summary, target) == target
    assert_png(target)
    assert_png(plots.plot_accuracy_vs_forgetting({"x": None}, tmp_path / "empty.png"))
    assert_no_temp_files(tmp_path)


def test_plot_cost(tmp_path: Path) -> None:
    costs = {
        "prompt-pool": {
            "bytes_per_task": 87_100.0,
            "train_seconds": 120.5,
            "trainable_parameters": 15_360,
        },
        "finetune": {
            "bytes_per_task": 5e8,
            "train_seconds": 900.0,
            "trainable_parameters": 125_000_000,
        },
        "zero-shot": {"bytes_per_task": 0.0, "train_seconds": None, "trainable_parameters": 0},
        "crashed": None,
    }
    target = tmp_path / "cost.png"
    assert plots.plot_cost(costs, target) == target
    assert_png(target)
    all_missing = {
        "a": {"bytes_per_task": None, "train_seconds": None, "trainable_parameters": None}
    }
    assert_png(plots.plot_cost(all_missing, tmp_path / "missing.png"))
    assert_png(plots.plot_cost({}, tmp_path / "empty.png"))
    assert_no_temp_files(tmp_path)


def test_plot_data_efficiency(tmp_path: Path) -> None:
    results = {
        "prompt-pool": {
            1: {"mean": 50.0, "std": 3.0},
            4: {"mean": 70.0, "std": 2.0},
            16: {"mean": 85.0, "std": 1.0},
        },
        # Keys as they come back from JSON, a missing point and a bare mean.
        "finetune": {"1": {"mean": 40.0, "std": None}, "4": None, "16": 80.0},
        "crashed": None,
        "nothing": {},
    }
    target = tmp_path / "data_efficiency.png"
    assert plots.plot_data_efficiency(results, target) == target
    assert_png(target)
    assert_png(plots.plot_data_efficiency({}, tmp_path / "empty.png"))
    assert_no_temp_files(tmp_path)


def test_overwrite_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "forgetting.png"
    target.write_bytes(b"old")
    plots.plot_forgetting(TASKS, MATRICES, target)
    assert_png(target)
    assert_no_temp_files(tmp_path)


def test_failed_write_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "cost.png"
    target.write_bytes(b"old")

    def broken_replace(source: str, destination: str, **directories: object) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(plots.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk went away"):
        plots.plot_cost(
            {"a": {"bytes_per_task": 1.0, "train_seconds": 1.0, "trainable_parameters": 1}}, target
        )
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["cost.png"]
