"""Reliability of the commands that write a path the user names, and of task names.

``continual export --out`` once replaced a pool's own manifest or task file (every later command
then failed), wrote through devices, FIFOs and links, replaced existing files without a word and
made missing folders. Each target below must now exit 2 with one line, every byte unchanged.
Task names are checked where they enter (learn, import --as, the API). The command line runs
in this process on a tiny random BERT saved as a model folder.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from test_boundaries import COOL, WARM, invoke, one_line, sentences, snapshot, write_csv

from continual.exported import read_export_file
from continual.format import MAX_TASK_NAME
from continual.storage import MANIFEST, pool_folder_of, read_manifest

LEARN = ("--epochs", "1", "--prompt-length", "4", "--max-length", "32", "--no-progress")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return write_csv(root / "colours.csv", sentences(WARM, "warm") + sentences(COOL, "cool"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_model_dir, train_file) -> Path:
    folder = tmp_path_factory.mktemp("export") / "pool"
    code, _, err = invoke(
        "learn",
        folder,
        "--task",
        "colours",
        "--train",
        train_file,
        "--backbone",
        tiny_model_dir,
        *LEARN,
    )
    assert code == 0, err
    return folder


def export(pool: Path, out, *options: str) -> tuple[int, str, str]:
    return invoke("export", pool, "--task", "colours", "--out", out, *options)


def task_file(pool: Path) -> Path:
    return pool / read_manifest(pool)["tasks"][0]["file"]


# Each target: (how to make it under tmp_path given the pool, what the error says).
TARGETS = {
    "the manifest": (lambda pool, tmp: pool / MANIFEST, "inside the pool folder"),
    "a task file": (lambda pool, tmp: task_file(pool), "inside the pool folder"),
    "the lock": (lambda pool, tmp: pool / ".lock", "inside the pool folder"),
    "a new file in the pool's folder": (lambda pool, tmp: pool / "x.st", "inside the pool folder"),
    "the manifest through a linked folder": (
        lambda pool, tmp: _linked(tmp / "alias", pool) / MANIFEST,
        "inside the pool folder",
    ),
    "a FIFO": (lambda pool, tmp: _fifo(tmp / "fifo"), "a FIFO"),
    "a symlink": (lambda pool, tmp: _linked(tmp / "link", _file(tmp / "victim")), "symbolic link"),
    "a dangling symlink": (lambda pool, tmp: _linked(tmp / "dangling", tmp / "nowhere"), "link"),
    "an existing file": (lambda pool, tmp: _file(tmp / "existing"), "pass --force"),
    "a folder": (lambda pool, tmp: _folder(tmp / "folder"), "a directory"),
    "a missing folder": (lambda pool, tmp: tmp / "missing" / "x.st", "does not exist"),
}


def _linked(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _file(path: Path) -> Path:
    path.write_bytes(b"precious bytes\n")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    (path / "inside").write_bytes(b"kept")
    return path


@pytest.mark.parametrize(
    "target, force",
    # --force replaces an existing regular file (tested below), and nothing else.
    [
        (target, force)
        for target in TARGETS
        for force in (False, True)
        if not (force and target == "an existing file")
    ],
)
def test_export_refuses_what_it_must_not_write(pool, tmp_path, target, force):
    make, fragment = TARGETS[target]
    out = make(pool, tmp_path)
    before = snapshot(pool), snapshot(tmp_path)
    line = one_line(*export(pool, out, *(["--force"] if force else [])), str(out))
    assert fragment in line, line
    assert (snapshot(pool), snapshot(tmp_path)) == before  # every byte, link and kind unchanged
    read_manifest(pool)  # the pool still loads its manifest


def test_export_never_writes_to_a_device(pool):
    for options in ([], ["--force"]):
        line = one_line(*export(pool, "/dev/null", *options), "/dev/null")
        assert "is a device" in line
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_force_replaces_an_existing_regular_file_atomically(pool, tmp_path):
    out = _file(tmp_path / "existing")
    inode = out.stat().st_ino
    code, printed, err = export(pool, out, "--force")
    assert code == 0, err
    assert json.loads(printed)["file"] == str(out)
    assert out.stat().st_ino != inode  # a new file renamed into place, never written through
    assert read_export_file(out)[1]["name"] == "colours"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["existing"]  # no temporary left


def test_export_to_a_new_file_works_and_then_refuses_to_overwrite_it(pool, tmp_path):
    out = tmp_path / "colours.safetensors"
    assert export(pool, out)[0] == 0
    first = out.read_bytes()
    one_line(*export(pool, out), "already exists; pass --force")
    assert out.read_bytes() == first


def test_the_api_export_follows_the_same_rules(pool, tmp_path, tiny_model_dir):
    from continual import Backbone, ContinualError, PromptPool

    loaded = PromptPool.load(pool, Backbone.load(tiny_model_dir, max_length=32))
    before = snapshot(pool)
    with pytest.raises(ContinualError, match="inside the pool folder"):
        loaded.export_task("colours", pool / MANIFEST)
    with pytest.raises(ContinualError, match="does not exist"):
        loaded.export_task("colours", tmp_path / "missing" / "x.st")
    assert snapshot(pool) == before and not (tmp_path / "missing").exists()


# -- task names ----------------------------------------------------------------------------------
BAD_NAMES = {
    "a control character": ("bad\x07name", "control character"),
    "a line break": ("two\nlines", "control character"),
    "over 200 characters": ("n" * (MAX_TASK_NAME + 1), f"at most {MAX_TASK_NAME}"),
    "not UTF-8": (os.fsdecode(b"bad\xffname"), "not valid UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_learn_refuses_a_bad_task_name(pool, train_file, tiny_model_dir, case):
    name, fragment = BAD_NAMES[case]
    before = snapshot(pool)
    line = one_line(
        *invoke(
            "learn",
            pool,
            "--task",
            name,
            "--train",
            train_file,
            "--backbone",
            tiny_model_dir,
            *LEARN,
        ),
        fragment,
    )
    assert len(line) < 200  # a long name is cut to 80 characters
    assert snapshot(pool, skip=lambda relative: relative == ".lock") == {
        key: value for key, value in before.items() if key != ".lock"
    }


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_import_as_refuses_a_bad_task_name(pool, tmp_path, case):
    name, fragment = BAD_NAMES[case]
    exported = tmp_path / "colours.safetensors"
    assert export(pool, exported)[0] == 0
    target = tmp_path / "other"
    line = one_line(*invoke("import", target, exported, "--as", name), fragment)
    assert len(line) < 200
    assert not target.exists()


def test_remove_takes_out_a_name_an_older_version_let_in(pool, tmp_path):
    """A pool holding a non-UTF-8 name (from before the check) is repaired by the command line."""
    import shutil

    copy = tmp_path / "pool"
    shutil.copytree(pool, copy)
    manifest = read_manifest(copy)
    legacy = dict(manifest["tasks"][0], name=os.fsdecode(b"bad\xff"))
    manifest["tasks"].append(legacy)
    (copy / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    code, _, err = invoke("remove", copy, "--task", os.fsdecode(b"bad\xff"))
    assert code == 0, err
    assert [task["name"] for task in read_manifest(copy)["tasks"]] == ["colours"]


def test_error_lines_cut_a_long_name_and_list_a_few_tasks(pool, tmp_path):
    import shutil

    copy = tmp_path / "pool"
    shutil.copytree(pool, copy)
    manifest = read_manifest(copy)
    record = manifest["tasks"][0]
    manifest["tasks"] += [dict(record, name=f"{n}-" + "t" * 190) for n in range(30)]
    (copy / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    line = one_line(*invoke("remove", copy, "--task", "x" * 100_000), "(100000 characters)")
    assert "the pool has 31 task(s)" in line and "(26 more)" in line
    assert len(line) < 1000


def test_a_file_appearing_while_the_export_is_written_is_kept(tmp_path, monkeypatch):
    from continual import ContinualError, files

    out = tmp_path / "out.st"
    write = files.write_synced_temporary

    def racing(directory, name, data):
        write(directory, name, data)
        out.write_bytes(b"another writer's bytes")  # lands between the checks and the rename

    monkeypatch.setattr(files, "write_synced_temporary", racing)
    with pytest.raises(ContinualError, match="appeared while being written"):
        files.write_new_file(out, b"export", pool_folder_of=pool_folder_of)
    assert out.read_bytes() == b"another writer's bytes"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.st"]  # no temporary left


def test_without_hard_links_a_new_file_is_still_never_written_over(tmp_path, monkeypatch):
    import errno

    from continual import ContinualError, files

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "out.st"
    assert (
        files.write_new_file(out, b"first", pool_folder_of=pool_folder_of) == out
        and out.read_bytes() == b"first"
    )
    with pytest.raises(ContinualError, match="already exists"):
        files.write_new_file(out, b"second", pool_folder_of=pool_folder_of)
    assert out.read_bytes() == b"first"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.st"]
