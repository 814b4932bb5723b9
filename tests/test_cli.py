"""The command line, driven in-process through `continual.cli.main` with the real packaged MiniLM.

One small pool (two tasks, tiny data, one epoch) is built per module; tests that change a pool
work on a copy of it.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from continual.cli import main

COLOUR_ROWS = {
    "warm": [
        "red roses",
        "an orange sunset",
        "yellow sunflowers",
        "a crimson scarf",
        "golden sand",
        "pink blossom",
        "amber light",
        "a scarlet door",
        "red brick walls",
        "orange flames",
        "a yellow taxi",
        "a crimson sky",
    ],
    "cool": [
        "blue water",
        "a green meadow",
        "purple grapes",
        "a cyan wall",
        "teal paint",
        "a navy coat",
        "violet flowers",
        "a turquoise sea",
        "blue ice",
        "green leaves",
        "a purple robe",
        "an indigo night",
    ],
}
ANIMAL_ROWS = {
    1: [
        "my dog sleeps",
        "the cat purrs",
        "a hamster in a cage",
        "our rabbit eats carrots",
        "the parrot talks",
        "a puppy plays",
        "the kitten naps",
        "a goldfish swims in a bowl",
        "my dog fetches",
        "the cat climbs",
        "a guinea pig squeaks",
        "the puppy barks",
    ],
    0: [
        "a lion roars",
        "the tiger hunts",
        "wolves howl",
        "a bear catches salmon",
        "the eagle soars",
        "a shark circles",
        "the leopard climbs",
        "a wild boar digs",
        "the lion sleeps",
        "a tiger stalks",
        "a bear in the forest",
        "the wolf pack runs",
    ],
}


def invoke(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in argv])
    return code, out.getvalue(), err.getvalue()


def write_csv(path: Path, rows: dict) -> Path:
    lines = ["text,label"] + [f"{text},{label}" for label, texts in rows.items() for text in texts]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: dict) -> Path:
    # JSONL labels are strings: a bare number is refused, never silently turned into one.
    lines = [
        json.dumps({"text": text, "label": str(label)})
        for label, texts in rows.items()
        for text in texts
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pool_state(pool: Path) -> dict[str, bytes]:
    """Every file of a pool directory but its lock, by relative path."""
    return {
        str(p.relative_to(pool)): p.read_bytes()
        for p in sorted(pool.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


LEARN = ("--epochs", "1", "--prompt-length", "4", "--no-progress")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    colours = write_csv(root / "colours.csv", COLOUR_ROWS)
    animals = write_jsonl(root / "animals.jsonl", ANIMAL_ROWS)
    pool = root / "pool"
    first = invoke("learn", pool, "--task", "colours", "--train", colours, *LEARN)
    after_first = pool_state(pool)
    second = invoke("learn", pool, "--task", "animals", "--train", animals, *LEARN)
    return SimpleNamespace(
        root=root,
        pool=pool,
        colours=colours,
        animals=animals,
        first=first,
        second=second,
        after_first=after_first,
    )


@pytest.fixture
def pool_copy(built, tmp_path):
    target = tmp_path / "pool"
    shutil.copytree(built.pool, target)
    return target


def manifest(pool: Path) -> dict:
    return json.loads((pool / "manifest.json").read_text())


# -- learn ----------------------------------------------------------------------------------------


def test_learn_creates_a_pool_and_prints_json(built):
    code, out, _ = built.first
    assert code == 0
    result = json.loads(out)
    assert result["pool"] == str(built.pool)
    assert result["task"] == "colours"
    assert result["labels"] == ["cool", "warm"]
    assert 0.0 <= result["accuracy"] <= 100.0
    assert result["routing_accuracy"] == 100.0  # a single task: every input goes to it
    assert result["train_seconds"] >= 0
    first = json.loads(built.after_first["manifest.json"])
    assert [task["name"] for task in first["tasks"]] == ["colours"]
    assert first["backbone"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert first["prompt_length"] == 4
    # --epochs applies to the task being learned; the pool keeps its default for later tasks.
    assert first["tasks"][0]["stats"]["epochs_run"] == 1
    assert first["training"]["epochs"] == 6


def test_second_learn_adds_a_task_and_keeps_the_first_file(built):
    code, out, _ = built.second
    assert code == 0
    result = json.loads(out)
    assert result["task"] == "animals"
    assert result["labels"] == ["0", "1"]  # JSON numbers, kept as the strings written
    saved = manifest(built.pool)
    assert [task["name"] for task in saved["tasks"]] == ["colours", "animals"]
    before = json.loads(built.after_first["manifest.json"])["tasks"][0]
    assert saved["tasks"][0]["file"] == before["file"]
    assert saved["tasks"][0]["sha256"] == before["sha256"]
    assert (built.pool / before["file"]).read_bytes() == built.after_first[before["file"]]


def test_learn_with_an_existing_name_exits_2_and_leaves_the_pool(built, pool_copy):
    before = pool_state(pool_copy)
    code, out, err = invoke(
        "learn", pool_copy, "--task", "colours", "--train", built.animals, *LEARN
    )
    assert code == 2
    assert out == ""
    assert "'colours' is already in" in err and "--task" in err
    assert pool_state(pool_copy) == before


def test_learn_resume_skips_an_existing_task(built, pool_copy):
    before = pool_state(pool_copy)
    code, out, err = invoke(
        "learn", pool_copy, "--task", "colours", "--train", built.colours, "--resume", *LEARN
    )
    assert code == 0
    assert out == ""
    assert "nothing to do" in err
    assert pool_state(pool_copy) == before


# -- predict, evaluate, info ----------------------------------------------------------------------


def test_predict_prints_one_json_object_per_input(built):
    texts = ["a scarlet rose", "the bear roars", "a teal wall"]
    code, out, _ = invoke("predict", built.pool, *texts)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["text"] for row in rows] == texts
    labels = {"colours": {"cool", "warm"}, "animals": {"0", "1"}}
    for row in rows:
        assert set(row) == {"text", "task", "label", "output", "score"}
        assert row["label"] in labels[row["task"]]
        assert 0.5 <= row["score"] <= 1.0  # the best of two classes


def test_predict_with_a_task_skips_routing(built):
    code, out, _ = invoke("predict", built.pool, "a scarlet rose", "blue ice", "--task", "animals")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2
    assert {row["task"] for row in rows} == {"animals"}
    assert {row["label"] for row in rows} <= {"0", "1"}


def test_predict_from_a_plain_text_file(built, tmp_path):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("a purple robe\n\nthe wolf hunts\r\n", encoding="utf-8")
    code, out, _ = invoke("predict", built.pool, "first given", "--file", inputs)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["text"] for row in rows] == ["first given", "a purple robe", "the wolf hunts"]


def test_predict_needs_input(built):
    code, out, err = invoke("predict", built.pool)
    assert code == 2 and out == ""
    assert "nothing to predict" in err


def test_evaluate_json(built):
    code, out, _ = invoke(
        "evaluate", built.pool, "--task", "animals", "--test", built.animals, "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["task"] == "animals"
    assert result["examples"] == 24
    assert 0.0 <= result["accuracy"] <= result["routing_accuracy"] <= 100.0
    code, out, _ = invoke(
        "evaluate", built.pool, "--task", "animals", "--test", built.animals, "--json", "--oracle"
    )
    assert code == 0
    oracle = json.loads(out)
    assert oracle["routing_accuracy"] is None
    assert oracle["accuracy"] >= result["accuracy"]  # routing can only lose examples


def test_evaluate_text_output(built):
    code, out, _ = invoke("evaluate", built.pool, "--task", "colours", "--test", built.colours)
    assert code == 0
    assert out.startswith("colours: accuracy ") and "on 24" in out and "routing accuracy" in out


def test_evaluate_unknown_task_exits_2(built):
    code, _, err = invoke("evaluate", built.pool, "--task", "plants", "--test", built.colours)
    assert code == 2 and "'plants'" in err


def test_info_json(built):
    code, out, _ = invoke("info", built.pool, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["backbone"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["hidden_size"] == 384 and info["prompt_length"] == 4
    assert info["selector"] == manifest(built.pool)["selector"]
    assert [task["name"] for task in info["tasks"]] == ["colours", "animals"]
    assert [task["labels"] for task in info["tasks"]] == [["cool", "warm"], ["0", "1"]]
    for task, record in zip(info["tasks"], manifest(built.pool)["tasks"]):
        assert task["bytes"] == (built.pool / record["file"]).stat().st_size > 4 * 384 * 4
        assert task["stats"]["epochs_run"] == 1


def test_info_text(built):
    code, out, _ = invoke("info", built.pool)
    assert code == 0
    lines = out.splitlines()
    assert "2 task(s)" in lines[0] and "prompt length 4" in lines[0]
    assert lines[1].strip().startswith("colours: 2 labels") and "KB" in lines[1]


def test_explain_prints_similarity_and_routing(built):
    code, out, _ = invoke(
        "explain", built.pool, "a scarlet rose", "the tiger hunts", "--tokens", "2"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "prompt similarity (cosine):"
    first = lines[1].split()
    second = lines[2].split()
    assert first[0] == "colours:" and second[0] == "animals:"
    assert float(first[1]) == pytest.approx(1.0, abs=0.005)
    assert float(second[2]) == pytest.approx(1.0, abs=0.005)
    assert first[2] == second[1]  # symmetric
    assert "nearest tokens of colours's prompt vectors:" in lines
    explained = [json.loads(line) for line in lines if line.startswith("{")]
    assert [item["text"] for item in explained] == ["a scarlet rose", "the tiger hunts"]
    for item in explained:
        assert set(item["routing"]) == {"colours", "animals"}
        best = max(item["routing"], key=item["routing"].get)
        assert item["task"] == best
        assert item["margin"] == pytest.approx(
            abs(item["routing"]["colours"] - item["routing"]["animals"]), abs=2e-4
        )


# -- bad input: exit 2, a message naming the file, row or field, the pool untouched ---------------


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("absent.csv", None, ["absent.csv", "not found"]),
        ("nolabel.csv", "text,category\nhello,a\nbye,b\n", ["nolabel.csv", "row 1", "'label'"]),
        ("empty.csv", "text,label\nhello,a\n  ,b\nbye,b\n", ["empty.csv", "row 2", "'text'"]),
        (
            "single.csv",
            "text,label\n" + "".join(f"text {i},same\n" for i in range(10)),
            ["'lonely'", "at least 2 distinct labels"],
        ),
        ("broken.jsonl", '{"text": "a", "label": "x"}\n{"text": \n', ["broken.jsonl", "row 2"]),
    ],
)
def test_bad_training_data_exits_2_and_leaves_the_pool(
    pool_copy, tmp_path, name, content, fragments
):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    before = pool_state(pool_copy)
    code, out, err = invoke("learn", pool_copy, "--task", "lonely", "--train", path, *LEARN)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    for fragment in fragments:
        assert fragment in err, err
    assert pool_state(pool_copy) == before


def test_predict_from_a_missing_file_exits_2(built, tmp_path):
    code, _, err = invoke("predict", built.pool, "--file", tmp_path / "absent.txt")
    assert code == 2 and "absent.txt" in err and "not found" in err


def test_corrupt_pool_exits_2_and_is_not_overwritten(built, pool_copy):
    (pool_copy / "manifest.json").write_text("{ not json", encoding="utf-8")
    before = pool_state(pool_copy)
    for argv in (
        ["predict", pool_copy, "a red rose"],
        ["info", pool_copy],
        ["learn", pool_copy, "--task", "more", "--train", built.colours, *LEARN],
    ):
        code, out, err = invoke(*argv)
        assert code == 2 and out == "", argv
        assert "manifest.json" in err and "not valid JSON" in err, err
    assert pool_state(pool_copy) == before


def test_pool_with_a_damaged_task_file_exits_2(pool_copy):
    record = manifest(pool_copy)["tasks"][0]
    path = pool_copy / record["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = invoke("predict", pool_copy, "a red rose")
    assert code == 2 and "checksum" in err and path.name in err


def test_missing_pool_directory_exits_2(tmp_path):
    code, _, err = invoke("predict", tmp_path / "nowhere", "a red rose")
    assert code == 2 and "no such pool directory" in err
