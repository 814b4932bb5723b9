"""Task management: remove, export and import, through the API and through `continual.cli.main`.

Pools here sit on a tiny random BERT saved to a folder, so the command line can load their
backbone by path like any other model.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ANIMALS, COLOURS, count_task_file_reads, synthetic_pairs

from continual import Backbone, PromptPool, Task, TrainingConfig
from continual.cli import main
from continual.errors import ContinualError, PoolFormatError, TaskDataError
from continual.exported import read_export_file, write_export_file
from continual.manage import (
    NewPoolSettings,
    evaluate_file,
    learn_into_folder,
    pool_info,
)
from continual.storage import MANIFEST

TEXTS = [
    "the red and the blue here",
    "the dog and the lion now",
    "the cat and the wolf",
    "the teal and the gold today",
    "the eagle and the puppy outside",
]
SIZE_ROWS = {
    "small": ["ant", "mouse", "pea", "seed", "bean", "pin", "crumb"],
    "big": ["whale", "mountain", "tower", "ship", "elephant", "planet", "bus"],
}


def invoke(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in argv])
    return code, out.getvalue(), err.getvalue()


def files(pool: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(pool)): p.read_bytes()
        for p in sorted(pool.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def same(a, b) -> bool:
    """Same labels and scores, row by row (task names may differ: an import can rename)."""
    return [(p.label, p.score) for p in a] == [(p.label, p.score) for p in b]


@pytest.fixture(scope="module")
def backbone(tiny_model_dir) -> Backbone:
    return Backbone.load(tiny_model_dir, max_length=32)


def new_pool(backbone, selector="prototypes", prompt_length=4) -> PromptPool:
    return PromptPool(
        backbone,
        prompt_length=prompt_length,
        selector=selector,
        training=TrainingConfig(epochs=1, batch_size=32),
    )


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    return [
        Task.from_pairs("colours", synthetic_pairs(COLOURS, 20, seed=1), seed=0),
        Task.from_pairs("animals", synthetic_pairs(ANIMALS, 20, seed=2), seed=0),
        Task.from_pairs("sizes", synthetic_pairs(SIZE_ROWS, 20, seed=3), seed=0),
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, backbone, tasks) -> Path:
    """A two-task pool (colours, animals) on disk."""
    pool = new_pool(backbone)
    for task in tasks[:2]:
        pool.learn(task, progress=False)
    return pool.save(tmp_path_factory.mktemp("pools") / "base")


@pytest.fixture
def pool_dir(saved, tmp_path) -> Path:
    target = tmp_path / "pool"
    shutil.copytree(saved, target)
    return target


# -- the API ---------------------------------------------------------------------------------------
def test_remove_keeps_the_other_tasks_answers(saved, backbone):
    pool = PromptPool.load(saved, backbone)
    before = pool.predict(TEXTS, tasks="animals")
    entry = pool.remove("colours")
    assert entry.name == "colours" and pool.tasks == ["animals"]
    assert same(pool.predict(TEXTS, tasks="animals"), before)
    # One task left: routing can only pick it.
    assert {p.task for p in pool.predict(TEXTS)} == {"animals"}
    with pytest.raises(TaskDataError, match="'colours' is not in the pool"):
        pool.remove("colours")


def test_export_then_import_into_a_fresh_pool_predicts_identically(saved, backbone, tmp_path):
    pool = PromptPool.load(saved, backbone)
    path = pool.export_task("colours", tmp_path / "colours.safetensors")
    fresh = new_pool(backbone)
    entry = fresh.import_task(path)
    assert fresh.tasks == ["colours"] and entry.labels == pool.entries[0].labels
    assert entry.stats == pool.entries[0].stats
    assert same(fresh.predict(TEXTS, tasks="colours"), pool.predict(TEXTS, tasks="colours"))
    for key, tensor in pool.entries[0].tensors().items():
        assert torch.equal(entry.tensors()[key], tensor)
    # A name clash is refused; another name is fine and answers the same.
    with pytest.raises(TaskDataError, match="already in the pool"):
        fresh.import_task(path)
    fresh.import_task(path, name="colours-copy")
    assert same(fresh.predict(TEXTS, tasks="colours-copy"), pool.predict(TEXTS, tasks="colours"))


def test_predict_mixes_forced_and_routed_rows_and_refuses_below_min_score(saved, backbone):
    pool = PromptPool.load(saved, backbone)
    routed = pool.predict(TEXTS)
    forced = pool.predict(TEXTS, tasks="animals")
    mixed = pool.predict(TEXTS, tasks=[None, "animals", None, "animals", None])
    for i, prediction in enumerate(mixed):
        expected = forced[i] if i % 2 else routed[i]
        assert (prediction.task, prediction.label) == (expected.task, expected.label)
        assert prediction.score == pytest.approx(expected.score, abs=1e-5)
    # min_score refuses routed rows whose routing score is below it, never forced rows.
    scores = [p.routing_score for p in routed]
    cut = sorted(scores)[2]
    refused = pool.predict(TEXTS, min_score=cut)
    for prediction, score in zip(refused, scores):
        assert (prediction.task is None) == (score < cut)
        if prediction.task is None:
            assert prediction.label is None
    everything = pool.predict(TEXTS, tasks=[None, "animals", None, "animals", None], min_score=1e9)
    assert [p.task for p in everything] == [None, "animals", None, "animals", None]
    per_row = pool.predict(TEXTS, min_score=[1e9, None, None, None, 1e9])
    assert [p.task is None for p in per_row] == [True, False, False, False, True]
    with pytest.raises(TaskDataError, match="min_score"):
        pool.predict(TEXTS, min_score="high")
    with pytest.raises(TaskDataError, match="unknown task"):
        pool.predict(TEXTS, tasks=[None, "nope", None, None, None])


# -- the verbs on a folder ------------------------------------------------------------------------
NEW_POOL = NewPoolSettings(prompt_length=4, selector="prototypes", max_length=32)


def learn_quietly(pool_dir: Path, task: Task, backbone_dir: Path, **options):
    return learn_into_folder(
        pool_dir,
        task,
        backbone=str(backbone_dir),
        new_pool=NEW_POOL,
        epochs=1,
        progress=False,
        **options,
    )


def test_learn_into_folder_makes_a_pool_then_adds_to_it(tiny_model_dir, tasks, tmp_path):
    folder = tmp_path / "made"
    learned = learn_quietly(folder, tasks[0], tiny_model_dir)
    assert learned.entry is not None and learned.entry.name == "colours"
    assert (learned.rank, learned.world_size) == (0, 1)
    assert learned.score is not None and learned.score.task == "colours"
    assert learned.score.examples == len(tasks[0].test)
    pool = PromptPool.load(folder, str(tiny_model_dir))
    assert pool.tasks == ["colours"] and pool.prompt_length == 4
    assert pool.selector.config()["name"] == "prototypes"
    assert pool.backbone.max_length == 32
    for key, tensor in learned.entry.tensors().items():
        assert torch.equal(pool.entries[0].tensors()[key], tensor)
    # A second task joins the pool; the first one's file is not rewritten.
    first = files(folder)
    added = learn_quietly(folder, tasks[1], tiny_model_dir, seed=3)
    assert added.entry is not None and added.entry.stats["seed"] == 3
    assert PromptPool.load(folder, str(tiny_model_dir)).tasks == ["colours", "animals"]
    after = files(folder)
    assert all(after[name] == data for name, data in first.items() if name.startswith("tasks"))


def test_learn_into_folder_refuses_a_taken_name_unless_resuming(pool_dir, tiny_model_dir, tasks):
    state = files(pool_dir)
    with pytest.raises(ContinualError) as refused:
        learn_quietly(pool_dir, tasks[0], tiny_model_dir)
    assert str(refused.value) == (
        f"task 'colours' is already in {pool_dir}; choose another --task name"
    )
    assert learn_quietly(pool_dir, tasks[0], tiny_model_dir, resume=True).entry is None
    assert files(pool_dir) == state


def test_learn_into_folder_refuses_a_pool_of_another_backbone(
    pool_dir, tasks, make_tiny_model, tokenizer, tmp_path
):
    other = tmp_path / "other-model"
    make_tiny_model(1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    state = files(pool_dir)
    with pytest.raises(PoolFormatError) as loading:
        PromptPool.load(pool_dir, str(other))
    with pytest.raises(PoolFormatError) as learning:
        learn_quietly(pool_dir, tasks[2], other)
    assert "weights_sha256 differs" in str(learning.value)
    assert str(learning.value) == str(loading.value)  # the message loading gives
    assert files(pool_dir) == state
    # A file where the pool's folder should be is refused before anything is loaded.
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(PoolFormatError, match="not a folder"):
        learn_quietly(tmp_path / "a-file", tasks[2], other)


def test_pool_info_reports_settings_and_tasks_without_a_backbone(saved, backbone):
    info = pool_info(saved)
    loaded = PromptPool.load(saved, backbone)
    assert info.pool == saved and info.backbone == backbone.fingerprint()["name"]
    assert (info.hidden_size, info.prompt_length, info.placement) == (32, 4, "input")
    assert info.selector == loaded.selector.config()
    assert [task.name for task in info.tasks] == ["colours", "animals"]
    manifest = json.loads((saved / MANIFEST).read_text())
    for task, entry, record in zip(info.tasks, loaded.entries, manifest["tasks"]):
        assert task.labels == entry.labels and task.generation is None
        assert task.stats == entry.stats
        assert task.bytes == (saved / record["file"]).stat().st_size
    summary = info.to_dict()
    assert list(summary) == [
        "pool",
        "backbone",
        "hidden_size",
        "prompt_length",
        "placement",
        "selector",
        "tasks",
    ]
    assert summary["pool"] == str(saved)
    assert list(summary["tasks"][0]) == ["name", "labels", "generation", "bytes", "stats"]
    json.dumps(summary, allow_nan=False)


def test_pool_info_refuses_a_damaged_task_file(pool_dir):
    record = json.loads((pool_dir / MANIFEST).read_text())["tasks"][1]
    (pool_dir / record["file"]).write_bytes(b"not the task")
    with pytest.raises(PoolFormatError, match="checksum mismatch"):
        pool_info(pool_dir)


def test_evaluate_file_reads_the_task_kind_and_names_unknown_tasks(
    saved, backbone, tasks, tmp_path
):
    pool = PromptPool.load(saved, backbone)
    examples = tasks[0].test
    # Both an answer column per kind: read as the task's (labels), not refused as ambiguous.
    path = tmp_path / "colours.csv"
    path.write_text(
        "text,label,target\n" + "".join(f"{text},{label},x\n" for text, label in examples)
    )
    score = evaluate_file(pool, "colours", path, oracle=True)
    assert score == pool.evaluate("colours", examples, oracle=True)
    assert score.examples == len(examples)
    with pytest.raises(TaskDataError, match="'sizes' is not in the pool; the pool has 2 task"):
        evaluate_file(pool, "sizes", tmp_path / "missing.csv")


# -- the command line ------------------------------------------------------------------------------
def test_cli_remove(pool_dir, backbone):
    before = PromptPool.load(pool_dir, backbone).predict(TEXTS, tasks="animals")
    colours_file = json.loads((pool_dir / MANIFEST).read_text())["tasks"][0]["file"]
    code, out, err = invoke("remove", pool_dir, "--task", "colours")
    assert code == 0, err
    assert json.loads(out) == {"pool": str(pool_dir), "removed": "colours"}
    assert not (pool_dir / colours_file).exists()  # its file is gone with it
    pool = PromptPool.load(pool_dir, backbone)
    assert pool.tasks == ["animals"]
    assert same(pool.predict(TEXTS, tasks="animals"), before)
    # Unknown task, missing pool: one line, exit 2, nothing changed.
    state = files(pool_dir)
    code, out, err = invoke("remove", pool_dir, "--task", "colours")
    assert code == 2 and out == "" and err.count("\n") == 1 and "no task 'colours'" in err
    assert files(pool_dir) == state
    code, _, err = invoke("remove", pool_dir / "missing", "--task", "animals")
    assert code == 2 and "no such pool directory" in err
    assert not (pool_dir / "missing").exists()


def test_cli_export_import_round_trip_into_a_fresh_pool(pool_dir, backbone, tmp_path):
    original = PromptPool.load(pool_dir, backbone)
    out_file = tmp_path / "exports" / "animals.safetensors"
    out_file.parent.mkdir()  # export creates no folder
    code, out, err = invoke("export", pool_dir, "--task", "animals", "--out", out_file)
    assert code == 0, err
    assert json.loads(out)["file"] == str(out_file) and out_file.is_file()
    tensors, info = read_export_file(out_file)
    assert info["name"] == "animals" and info["labels"] == ["pet", "wild"]
    assert info["selector"] == "prototypes"
    assert info["backbone"] == backbone.fingerprint()
    assert set(tensors) == {"prompt", "head.weight", "head.bias", "selector.prototypes"}

    fresh_dir = tmp_path / "fresh"
    code, out, err = invoke("import", fresh_dir, out_file)
    assert code == 0, err
    assert json.loads(out) == {"pool": str(fresh_dir), "task": "animals", "labels": ["pet", "wild"]}
    # A pool on a local model folder loads only with that folder given, never by itself.
    with pytest.raises(PoolFormatError, match="does not load a local model by itself"):
        PromptPool.load(fresh_dir)
    fresh = PromptPool.load(fresh_dir, backbone=backbone.name)
    assert fresh.tasks == ["animals"] and fresh.prompt_length == original.prompt_length
    assert same(fresh.predict(TEXTS), original.predict(TEXTS, tasks="animals"))

    # --as imports a second copy; predictions for it are the original's.
    code, out, err = invoke("import", fresh_dir, out_file, "--as", "animals-2")
    assert code == 0, err
    fresh = PromptPool.load(fresh_dir, backbone)
    assert fresh.tasks == ["animals", "animals-2"]
    assert same(fresh.predict(TEXTS, tasks="animals-2"), original.predict(TEXTS, tasks="animals"))
    # Both names share one content-addressed file; removing one keeps the other loadable.
    assert invoke("remove", fresh_dir, "--task", "animals")[0] == 0
    assert PromptPool.load(fresh_dir, backbone).tasks == ["animals-2"]


def test_import_and_remove_read_no_other_task_file(pool_dir, backbone, tmp_path, monkeypatch):
    """Adding or removing one task rewrites the manifest and reads none of the other tasks'
    files (a pool of 1,000 tasks would pay 1,000 checksums); load still checks every one, so
    a file damaged before is reported then, and a missing one refuses the change at once."""
    from continual.manage import export_task, import_task, remove_task

    exported = export_task(pool_dir, "animals", tmp_path / "animals.safetensors")
    manifest = json.loads((pool_dir / MANIFEST).read_text())
    colours = pool_dir / next(r["file"] for r in manifest["tasks"] if r["name"] == "colours")
    data = bytearray(colours.read_bytes())
    data[-1] ^= 1  # damaged behind the pool's back
    colours.write_bytes(bytes(data))
    reads = count_task_file_reads(monkeypatch)
    import_task(pool_dir, exported, name="animals-2")
    remove_task(pool_dir, "animals")
    assert reads == []
    monkeypatch.undo()
    names = [r["name"] for r in json.loads((pool_dir / MANIFEST).read_text())["tasks"]]
    assert names == ["colours", "animals-2"]
    with pytest.raises(PoolFormatError, match=f"{colours.name}: checksum mismatch"):
        PromptPool.load(pool_dir, backbone)
    colours.unlink()
    before = files(pool_dir)
    with pytest.raises(PoolFormatError, match="task file missing"):
        import_task(pool_dir, exported, name="animals-3")
    with pytest.raises(PoolFormatError, match="task file missing"):
        remove_task(pool_dir, "animals-2")
    assert files(pool_dir) == before


def test_cli_predict_min_score(pool_dir, backbone):
    given = ("--backbone", backbone.name)  # a local model folder: named by the user
    code, out, err = invoke("predict", pool_dir, *TEXTS[:2], *given)
    assert code == 0, err
    assert all(json.loads(line)["task"] is not None for line in out.splitlines())
    code, out, err = invoke("predict", pool_dir, *TEXTS[:2], "--min-score", "1e9", *given)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["task"], r["label"]) for r in rows] == [(None, None), (None, None)]


def refuse(pool: Path, *argv) -> str:
    state = files(pool) if pool.exists() else None
    code, out, err = invoke("import", pool, *argv)
    assert code == 2, (out, err)
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1
    if state is not None:
        assert files(pool) == state  # refused before anything was written
    return err


def test_cli_import_refusals(
    pool_dir, saved, backbone, make_tiny_model, tokenizer, tasks, tmp_path
):
    exported = tmp_path / "colours.safetensors"
    assert invoke("export", saved, "--task", "colours", "--out", exported)[0] == 0

    # A name clash, then the same file under a free name is fine.
    assert "already in the pool" in refuse(pool_dir, exported)

    # Another backbone: same architecture, other weights.
    other = Backbone(make_tiny_model(1), tokenizer, "tiny-bert-1", max_length=32)
    other_pool = new_pool(other)
    other_pool.learn(tasks[2], progress=False)
    other_dir = other_pool.save(tmp_path / "other")
    err = refuse(other_dir, exported)
    assert str(exported) in err and "backbone" in err and "weights_sha256" in err

    # Another selector: the state holds prototypes, a gaussian pool needs a mean and covariance.
    gaussian = new_pool(backbone, selector="gaussian")
    gaussian.learn(tasks[2], progress=False)
    gaussian_dir = gaussian.save(tmp_path / "gaussian")
    assert "'prototypes' selector" in refuse(gaussian_dir, exported)

    # Another prompt length.
    longer = new_pool(backbone, prompt_length=6)
    longer.learn(tasks[2], progress=False)
    longer_dir = longer.save(tmp_path / "longer")
    assert "prompt shape" in refuse(longer_dir, exported)

    # A selector state that does not fit: prototypes of the wrong width.
    tensors, info = read_export_file(exported)
    tensors["selector.prototypes"] = torch.zeros(3, 7)
    bad_state = write_export_file(
        tmp_path / "bad-state.safetensors",
        tensors,
        name="odd",
        labels=info["labels"],
        stats=info["stats"],
        selector=info["selector_config"],
        backbone=info["backbone"],
    )
    assert "selector state 'prototypes' has shape (3, 7)" in refuse(pool_dir, bad_state)

    # Files that are not exports, or whose metadata is broken: the error names the file.
    task_file = next((pool_dir / "tasks").iterdir())
    assert "not an exported continual task" in refuse(pool_dir, task_file)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert str(garbage) in refuse(pool_dir, garbage)
    assert "task file not found" in refuse(pool_dir, tmp_path / "missing.safetensors")
    data = exported.read_bytes()
    broken = tmp_path / "broken-labels.safetensors"
    broken.write_bytes(data.replace(b'"labels":"[', b'"labels":"{', 1))
    assert "metadata 'labels'" in refuse(pool_dir, broken)

    # A refused import into a pool that does not exist yet creates no manifest.
    fresh = tmp_path / "fresh"
    refuse(fresh, bad_state)
    assert not (fresh / MANIFEST).exists()


def test_export_refuses_an_unknown_task(saved, tmp_path):
    code, _out, err = invoke("export", saved, "--task", "nope", "--out", tmp_path / "x")
    assert code == 2 and "no task 'nope'" in err and not (tmp_path / "x").exists()


def test_export_file_is_checked_field_by_field(saved, backbone, tmp_path):
    pool = PromptPool.load(saved, backbone)
    path = pool.export_task("colours", tmp_path / "c.safetensors")
    tensors, info = read_export_file(path)
    for field, value, message in [
        ("name", " padded ", "metadata 'name'"),
        ("labels", ["only-one"], "at least 2 strings"),
        ("labels", ["warm", "warm"], "duplicates"),
        ("backbone", {"name": "x"}, "lacks"),
    ]:
        meta = dict(
            name=info["name"],
            labels=info["labels"],
            stats=info["stats"],
            selector=info["selector_config"],
            backbone=info["backbone"],
        )
        meta[field] = value
        bad = write_export_file(tmp_path / f"bad-{field}.safetensors", tensors, **meta, force=True)
        with pytest.raises(PoolFormatError, match=message) as caught:
            read_export_file(bad)
        assert str(bad) in str(caught.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["remove", "POOL", "--task", "x", "--wait", "nan"],
        ["import", "POOL", "FILE", "--wait", "-1"],
        ["serve", "POOL", "--port", "70000"],
        ["serve", "POOL", "--poll", "nan"],
        ["serve", "POOL", "--max-batch-tokens", "0"],
        ["serve", "POOL", "--max-texts", "0"],
    ],
)
def test_numeric_options_out_of_range_are_one_line_exit_2(argv, tmp_path):
    argv = [
        str(tmp_path / "pool") if a == "POOL" else str(tmp_path / "f") if a == "FILE" else a
        for a in argv
    ]
    code, _, err = invoke(*argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "pool").exists()
