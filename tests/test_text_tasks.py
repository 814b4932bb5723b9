"""Text-to-text tasks as data: files with a ``target`` column, in-memory pairs, generation
settings, and the task metrics (exact match, chrF, ROUGE-L). No model is loaded."""

from __future__ import annotations

import json

import pytest

from continual import ContinualError, Task, TaskDataError
from continual.data import Generation
from continual.metrics import task_metric_scores


def test_a_target_column_makes_a_text_to_text_task(tmp_path):
    csv_file = tmp_path / "headlines.csv"
    csv_file.write_text(
        "text,target\n" + "\n".join(f"article {i},headline {i}" for i in range(10)) + "\n"
    )
    task = Task.from_files("headlines", csv_file, metric="rouge_l", stop=["\n"])
    assert task.kind == "generate" and task.labels == []
    assert task.generation == Generation(metric="rouge_l", stop=("\n",))
    # Not stratified by target: ten distinct targets still give test and validation examples.
    assert len(task.train) == 7 and len(task.validation) == 1 and len(task.test) == 2
    every = task.train + task.validation + task.test
    assert sorted(every) == sorted((f"article {i}", f"headline {i}") for i in range(10))

    jsonl = tmp_path / "words.jsonl"
    jsonl.write_text("".join(json.dumps({"text": w, "target": w[::-1]}) + "\n" for w in "abcde"))
    assert Task.from_files("words", jsonl).kind == "generate"


def test_a_file_with_label_and_target_needs_a_kind(tmp_path):
    both = tmp_path / "both.csv"
    both.write_text("text,label,target\n" + "".join(f"t{i},l{i % 2},x{i}\n" for i in range(10)))
    with pytest.raises(TaskDataError, match="both 'label' and 'target'"):
        Task.from_files("both", both)
    assert Task.from_files("both", both, kind="generate").kind == "generate"
    assert Task.from_files("both", both, kind="classify").labels == ["l0", "l1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "target": "b"}\n{"text": "c", "target": 5}\n', "row 2, field 'target'"),
        ('{"text": "a", "target": "b"}\n{"text": "c", "target": ""}\n', "empty target"),
        ('{"text": "a", "target": "b"}\n{"text": "c"}\n', "row 2: missing field 'target'"),
    ],
)
def test_bad_targets_name_the_file_row_and_field(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TaskDataError, match=message) as raised:
        Task.from_files("bad", path)
    assert str(raised.value).startswith(str(path))


def test_generation_settings_are_checked():
    pairs = [("a", "b"), ("c", "d")]
    for bad, match in (
        ({"metric": "bleu"}, "unknown metric"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": [""]}, "stop"),
    ):
        with pytest.raises(TaskDataError, match=match):
            Task.from_pairs("t", pairs, kind="generate", **bad)
    with pytest.raises(ContinualError, match="stop"):
        Generation(stop="\n")  # type: ignore[arg-type]
    with pytest.raises(TaskDataError, match="empty target"):
        Task("t", train=[("a", " ")], generation=Generation())
    settings = Generation(metric="chrf", max_new_tokens=8, stop=("\n",))
    assert Generation.from_dict(settings.to_dict()) == settings
    with pytest.raises(ContinualError, match="unknown generation setting"):
        Generation.from_dict({"metric": "chrf", "beams": 4})


def test_task_metrics():
    assert task_metric_scores("exact_match", ["  Paris ", "paris"], ["Paris", "Paris"]) == [
        100.0,
        0.0,
    ]
    assert task_metric_scores("chrf", ["the cat sat"], ["the cat sat"]) == [100.0]
    assert task_metric_scores("rouge_l", ["the cat sat"], ["the cat sat"]) == [100.0]
    assert task_metric_scores("rouge_l", ["dogs bark"], ["the cat sat"]) == [0.0]
    partial = task_metric_scores("chrf", ["the cat sat"], ["the cat sat down"])[0]
    assert 0.0 < partial < 100.0
    with pytest.raises(ContinualError, match="unknown metric"):
        task_metric_scores("bleu", ["a"], ["a"])
