"""The benchmark runner end to end: a two-task TOML sequence through `continual run` on the
packaged MiniLM, with a pool, its oracle and one baseline, then `--resume`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import ANIMAL_ROWS, COLOUR_ROWS, invoke, write_csv

pytestmark = pytest.mark.slow  # `continual run` loads the real MiniLM

METHODS = ("prompt-pool", "prompt-pool-oracle", "linear-probe")


def write_sequence(folder: Path) -> Path:
    for name, rows in (("colours", COLOUR_ROWS), ("animals", ANIMAL_ROWS)):
        write_csv(folder / f"{name}_train.csv", {label: texts[:8] for label, texts in rows.items()})
        write_csv(folder / f"{name}_test.csv", {label: texts[8:] for label, texts in rows.items()})
    toml = folder / "seq.toml"
    toml.write_text(
        "".join(
            f'[[task]]\nname = "{name}"\ntrain = "{name}_train.csv"\ntest = "{name}_test.csv"\n'
            for name in ("colours", "animals")
        )
    )
    return toml


def test_run_writes_results_and_resume_continues_without_retraining(tmp_path):
    out = tmp_path / "out"
    argv = [
        "run",
        "--sequence",
        write_sequence(tmp_path),
        "--methods",
        *METHODS,
        "--out",
        out,
        "--epochs",
        "1",
        "--no-progress",
    ]
    code, _stdout, stderr = invoke(*argv)
    assert code == 0, stderr
    summary = json.loads((out / "results.json").read_text())
    assert summary["complete"] and sorted(summary["methods"]) == sorted(METHODS)
    assert [task["test"] for task in summary["tasks"]] == [8, 8]
    for name in METHODS:
        run = next(run for run in summary["runs"] if run["method"] == name)
        matrix = run["matrix"]
        assert len(matrix) == 2 and matrix[0][1] is None  # a task is scored once learned
        assert all(0 <= value <= 100 for row in matrix for value in row if value is not None)
    # The oracle pool cannot forget: a task's prompt never changes and is always chosen.
    oracle = next(run for run in summary["runs"] if run["method"] == "prompt-pool-oracle")
    assert oracle["matrix"][1][0] == oracle["matrix"][0][0]
    assert summary["methods"]["prompt-pool-oracle"]["forgetting"]["mean"] == 0
    # Every final test input of each task is counted once in the routing table.
    pool = next(run for run in summary["runs"] if run["method"] == "prompt-pool")
    confusion = pool["routing_confusion"]
    assert {task: sum(row.values()) for task, row in confusion.items()} == {
        "colours": 8,
        "animals": 8,
    }
    own = [100 * confusion[task].get(task, 0) / 8 for task in ("colours", "animals")]
    assert summary["methods"]["prompt-pool"]["routing_accuracy"]["mean"] == pytest.approx(
        sum(own) / 2
    )
    report = (out / "report.md").read_text()
    assert "| prompt-pool |" in report and "Where `prompt-pool` sent" in report
    assert {path.name for path in out.glob("*.png")} == {
        "forgetting.png",
        "accuracy_matrices.png",
        "accuracy_vs_forgetting.png",
        "cost.png",
    }

    code, _, stderr = invoke(*argv, "--resume")
    assert code == 0, stderr
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["runs"] == summary["runs"]  # nothing was run again
    assert len(resumed["resumed_with"]) == 1 and resumed["command"] == summary["command"]
