"""Reliability at the pool's boundaries: it touches only what it made, reads with a bound, and
every failure of the command line is one line.

Found by probing as a careless user and as an attacker: a pool written into a folder that was
not a pool, symbolic links where the pool writes, locks or reads, FIFOs and devices as data or
task files, a manifest naming a local model, values of the wrong type or range, and outputs that
were not JSON or not safe to print. The command line runs in this process on a tiny random BERT
saved as a model folder (``--backbone``), so the module needs no real model.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _counted import CountedProperties, record_counts
from hypothesis import HealthCheck
from hypothesis import strategies as st
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from continual import Backbone, ContinualError, PoolFormatError, PromptPool, Task, TaskDataError
from continual import files as files_module
from continual.cli import main
from continual.pool_lock import PoolLock
from continual.storage import MANIFEST, remove_unreferenced

SETTINGS = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
prop = CountedProperties(**SETTINGS)

WARM = ["red", "orange", "yellow", "gold", "pink", "amber", "crimson", "scarlet"]
COOL = ["blue", "green", "purple", "cyan", "teal", "navy", "violet", "indigo"]
PETS = ["dog", "cat", "hamster", "rabbit", "parrot", "puppy", "kitten", "goldfish"]
WILD = ["lion", "tiger", "wolf", "bear", "eagle", "shark", "leopard", "cobra"]


def sentences(words: list[str], label: str) -> list[tuple[str, str]]:
    return [(f"the {a} and the {b}", label) for a in words for b in words if a != b][:30]


def write_csv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{g}\n" for t, g in pairs), encoding="utf-8")
    return path


def invoke(*argv) -> tuple[int, str, str]:
    """The command line in this process: (exit code, stdout, stderr); usage errors included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([arg if isinstance(arg, str) else str(arg) for arg in argv])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def one_line(code: int, out: str, err: str, *fragments: str, exit_code: int = 2) -> str:
    """The result must be exit ``exit_code``, nothing on stdout, one error line holding each
    fragment and no traceback; returns the line."""
    assert code == exit_code, (code, out, err)
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return lines[0]


def snapshot(root: Path, skip=lambda relative: False) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): kind and content, by relative path."""
    state: dict[str, tuple] = {}
    for directory, folders, names in os.walk(root, followlinks=False):
        for name in folders + names:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            if skip(relative):
                continue
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                state[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                state[relative] = ("dir",)
            elif stat.S_ISREG(mode):
                state[relative] = ("file", path.read_bytes(), stat.S_IMODE(mode))
            else:
                state[relative] = ("special", stat.S_IFMT(mode))
    return state


def finishes(function, *args, seconds: float = 30.0):
    """``function(*args)`` in a thread that must end within ``seconds`` (a blocked read of a
    FIFO would otherwise hang the run); returns its result or raises its exception."""
    import threading

    box: dict = {}

    def run():
        try:
            box["result"] = function(*args)
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for {seconds} s: {args}"
    if "error" in box:
        raise box["error"]
    return box.get("result")


# -- a tiny model folder, data files and a pool made by the command line -------------------------


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory) -> Path:
    """A tiny random BERT saved as a model folder (safetensors), loadable with --backbone."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny-model"
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("data")
    return SimpleNamespace(
        colours=write_csv(root / "colours.csv", sentences(WARM, "warm") + sentences(COOL, "cool")),
        animals=write_csv(root / "animals.csv", sentences(PETS, "pet") + sentences(WILD, "wild")),
    )


LEARN = ("--epochs", "1", "--prompt-length", "4", "--no-progress")


@pytest.fixture(scope="module")
def built(model_dir, data, tmp_path_factory) -> Path:
    pool = tmp_path_factory.mktemp("built") / "pool"
    for task, train in (("colours", data.colours), ("animals", data.animals)):
        code, _, err = invoke(
            "learn", pool, "--task", task, "--train", train, "--backbone", model_dir, *LEARN
        )
        assert code == 0, err
    return pool


@pytest.fixture
def pool_copy(built, tmp_path) -> Path:
    target = tmp_path / "pool"
    shutil.copytree(built, target, symlinks=True)
    return target


def manifest_of(pool: Path) -> dict:
    return json.loads((pool / MANIFEST).read_text(encoding="utf-8"))


def edit_manifest(pool: Path, change) -> None:
    manifest = manifest_of(pool)
    change(manifest)
    (pool / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def task_path(pool: Path, index: int = 0) -> Path:
    return pool / manifest_of(pool)["tasks"][index]["file"]


# -- the pool owns only what it made ---------------------------------------------------------------


def test_learn_into_a_folder_that_is_not_a_pool_is_refused_and_deletes_nothing(
    data, model_dir, tmp_path
):
    """The reported case: the training file lay at myproj/tasks/task-1.csv and was deleted."""
    project = tmp_path / "myproj"
    (project / "tasks").mkdir(parents=True)
    train = project / "tasks" / "task-1.csv"
    shutil.copy(data.colours, train)
    (project / "notes.txt").write_text("mine")
    before = snapshot(project)
    result = invoke(
        "learn", project, "--task", "x", "--train", train, "--backbone", model_dir, *LEARN
    )
    one_line(*result, str(project), "not a pool", "not empty")
    assert snapshot(project) == before  # no .lock either


def test_learn_into_an_empty_pool_path_is_refused(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks").mkdir()
    shutil.copy(data.colours, tmp_path / "tasks" / "task-1.csv")
    before = snapshot(tmp_path)
    one_line(
        *invoke("learn", "", "--task", "x", "--train", "tasks/task-1.csv", *LEARN), "empty path"
    )
    assert snapshot(tmp_path) == before


def test_save_refuses_a_non_empty_folder_that_is_not_a_pool(
    tiny_pool_factory, synthetic_tasks, tmp_path
):
    pool = tiny_pool_factory()
    pool.learn(synthetic_tasks[0], progress=False)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    before = snapshot(folder)
    with pytest.raises(PoolFormatError, match="not a pool"):
        pool.save(folder)
    assert snapshot(folder) == before
    with pytest.raises(PoolFormatError, match="empty"):
        pool.save("")
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(PoolFormatError, match="not a folder"):
        pool.save(file)
    pool.save(tmp_path / "empty")  # a new folder, and an empty one, are fine
    (tmp_path / "empty2").mkdir()
    pool.save(tmp_path / "empty2")


def test_what_an_interrupted_first_save_leaves_is_still_the_pools(
    tiny_pool_factory, synthetic_tasks, tmp_path
):
    """A kill during the first save leaves a lock, task files and temporaries but no manifest:
    the folder is still the pool's, and the next save cleans it."""
    pool = tiny_pool_factory()
    pool.learn(synthetic_tasks[0], progress=False)
    folder = tmp_path / "pool"
    (folder / "tasks").mkdir(parents=True)
    (folder / ".lock").write_text("123\n")
    (folder / "tasks" / f"task-{'a' * 32}.safetensors").write_bytes(b"partial")
    (folder / "tasks" / f".task-{'b' * 32}.safetensors.0123456789abcdef.tmp").write_bytes(b"x")
    (folder / f".{MANIFEST}.abc_XY12.tmp").write_bytes(b"{")
    pool.save(folder)
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert names == [".lock", MANIFEST, "tasks", manifest_of(folder)["tasks"][0]["file"]]


def test_cleanup_deletes_only_the_pools_own_unreferenced_files(
    tiny_pool_factory, synthetic_tasks, tmp_path
):
    pool = tiny_pool_factory()
    pool.learn(synthetic_tasks[0], progress=False)
    folder = pool.save(tmp_path / "pool")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"not the pool's")
    foreign = {
        "tasks/task-1.csv": b"text,label\n",
        "tasks/notes.txt": b"notes",
        f"tasks/task-{'c' * 31}.safetensors": b"31 hex digits",
        f"tasks/task-{'D' * 32}.safetensors": b"upper case",
        f"tasks/task-{'e' * 32}.safetensors.bak": b"backup",
        "tasks/.hidden.tmp": b"someone's temporary",
        f".{MANIFEST}.bak": b"{}",
        "manifest.tmp": b"{}",
    }
    for name, content in foreign.items():
        (folder / name).write_bytes(content)
    link = folder / "tasks" / f"task-{'f' * 32}.safetensors"
    link.symlink_to(outside)
    stale = folder / "tasks" / f"task-{'0' * 32}.safetensors"
    stale.write_bytes(b"an old task file of this pool")
    remove_unreferenced(folder, {record["file"] for record in manifest_of(folder)["tasks"]})
    for name, content in foreign.items():
        assert (folder / name).read_bytes() == content, name
    assert link.is_symlink() and outside.read_bytes() == b"not the pool's"
    assert not stale.exists()  # the pool's own unreferenced file goes


def test_a_symlinked_tasks_folder_is_refused_for_learn_save_and_load(
    pool_copy, data, model_dir, tmp_path, tiny_backbone
):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(pool_copy / "tasks", elsewhere)
    (elsewhere / "task-1.csv").write_text("the user's")
    (pool_copy / "tasks").symlink_to(elsewhere)
    before = snapshot(elsewhere)
    result = invoke(
        "learn",
        pool_copy,
        "--task",
        "more",
        "--train",
        data.colours,
        "--backbone",
        model_dir,
        *LEARN,
    )
    one_line(*result, "tasks", "symbolic link")
    result = invoke("predict", pool_copy, "a red rose", "--backbone", model_dir)
    one_line(*result, "symbolic link")
    assert snapshot(elsewhere) == before


def test_a_symlinked_lock_is_never_written_even_when_learn_fails(
    pool_copy, data, model_dir, tmp_path
):
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate")
    (pool_copy / ".lock").unlink()
    (pool_copy / ".lock").symlink_to(target)
    for train in (data.colours, tmp_path / "absent.csv"):
        result = invoke(
            "learn", pool_copy, "--task", "more", "--train", train, "--backbone", model_dir, *LEARN
        )
        one_line(*result, ".lock", "symbolic link")
    with pytest.raises(PoolFormatError, match="symbolic link"), PoolLock(pool_copy):
        pass
    assert target.read_text() == "do not truncate"


@pytest.mark.parametrize("kind", ["symlink to a copy", "symlink to dev/zero", "fifo", "folder"])
def test_task_files_that_are_not_regular_files_in_the_pool_are_refused(
    pool_copy, model_dir, tmp_path, kind
):
    path = task_path(pool_copy)
    copy = tmp_path / "copy.safetensors"
    shutil.copy(path, copy)
    path.unlink()
    if kind == "symlink to a copy":
        path.symlink_to(copy)  # same bytes, same checksum: only the link check refuses it
    elif kind == "symlink to dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    result = finishes(invoke, "predict", pool_copy, "a red rose", "--backbone", model_dir)
    fragment = {"fifo": "FIFO", "folder": "directory"}.get(kind, "symbolic link")
    one_line(*result, path.name, fragment)


# -- the manifest's backbone is loaded only when it is safe to ------------------------------------


def test_a_pool_naming_a_local_model_needs_the_backbone_given(built, model_dir):
    assert manifest_of(built)["backbone"]["name"] == str(model_dir)
    with pytest.raises(PoolFormatError, match="--backbone"):
        PromptPool.load(built)
    one_line(*invoke("predict", built, "a red rose"), "--backbone", "not the packaged default")
    assert PromptPool.load(built, backbone=str(model_dir)).tasks == ["colours", "animals"]
    code, out, _ = invoke("predict", built, "a red rose", "--backbone", model_dir)
    assert code == 0 and json.loads(out)["task"] in ("colours", "animals")


@pytest.mark.parametrize(
    "name",
    [
        "org/name",
        "./org/name",
        "../models/tiny",
        "/etc",
        "~/model",
        "org/name/extra",
        "org/../x",
        "plain-local-folder",
    ],
)
def test_a_manifest_never_makes_load_read_a_local_folder(pool_copy, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    for folder in ("org/name", "plain-local-folder"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    edit_manifest(pool_copy, lambda m: m["backbone"].update(name=name))

    def no_load(*args, **kwargs):
        raise AssertionError(f"Backbone.load called with {args} {kwargs}")

    monkeypatch.setattr(Backbone, "load", no_load)
    with pytest.raises(PoolFormatError, match="give the backbone"):
        PromptPool.load(pool_copy)


def test_a_hub_name_that_is_not_a_local_path_may_be_loaded(pool_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edit_manifest(pool_copy, lambda m: m["backbone"].update(name="org/model"))
    asked = []

    def fake_load(name, **options):
        asked.append(name)
        raise ContinualError("offline")

    monkeypatch.setattr(Backbone, "load", fake_load)
    with pytest.raises(PoolFormatError, match="offline"):
        PromptPool.load(pool_copy)
    assert asked == ["org/model"]


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_model_weights_are_read_as_safetensors_only(model_dir, tmp_path):
    """A model folder with pickled weights only is refused, and the pickle never runs."""
    folder = tmp_path / "pickled"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").unlink()
    ran = tmp_path / "payload-ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(ran))))
    with pytest.raises(ContinualError, match="cannot load backbone"):
        Backbone.load(folder)
    assert not ran.exists()


# -- bounded reads --------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--train", "--file", "--test"])
def test_a_fifo_as_a_data_file_is_refused_at_once(built, model_dir, tmp_path, option):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    if option == "--train":
        argv = ["learn", tmp_path / "new", "--task", "t", "--train", fifo, *LEARN]
    elif option == "--file":
        argv = ["predict", built, "--file", fifo, "--backbone", model_dir]
    else:
        argv = ["evaluate", built, "--task", "colours", "--test", fifo, "--backbone", model_dir]
    one_line(*finishes(invoke, *argv), str(fifo), "FIFO")


def test_dev_zero_through_a_symlink_is_refused_without_reading(tmp_path):
    link = tmp_path / "zero.txt"
    link.symlink_to("/dev/zero")
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    with pytest.raises(TaskDataError, match="device"):
        finishes(Task.from_files, "t", tmp_path / "zero.csv")
    one_line(*invoke("predict", tmp_path / "pool", "--file", link), "zero.txt", "device")


def test_oversized_files_are_refused_naming_the_file_and_the_limit(
    pool_copy, data, model_dir, monkeypatch
):
    monkeypatch.setattr(files_module, "MAX_DATA_FILE_BYTES", 100)
    one_line(
        *invoke("learn", pool_copy, "--task", "x", "--train", data.colours, *LEARN),
        str(data.colours),
        "over the limit of 100 bytes",
    )
    monkeypatch.setattr(files_module, "MAX_DATA_FILE_BYTES", 1 << 30)
    monkeypatch.setattr(files_module, "MAX_TASK_FILE_BYTES", 100)
    one_line(
        *invoke("predict", pool_copy, "red", "--backbone", model_dir),
        "task-",
        "over the limit of 100 bytes",
    )
    monkeypatch.setattr(files_module, "MAX_MANIFEST_BYTES", 100)
    one_line(*invoke("info", pool_copy), MANIFEST, "over the limit of 100 bytes")


# -- never a traceback ----------------------------------------------------------------------------


def test_a_text_argument_that_is_not_utf8_is_one_line(built, model_dir):
    text = b"caf\xe9".decode("utf-8", "surrogateescape")  # how Python passes such argv bytes
    one_line(
        *invoke("predict", built, "fine", text, "--backbone", model_dir),
        "text argument 2",
        "not valid UTF-8",
        "0xe9",
    )
    one_line(*invoke("learn", built, "--task", text, "--train", "x.csv"), "--task", "UTF-8")


@pytest.mark.parametrize(
    "argv",
    [
        ["learn", "{pool}", "--task", "x", "--train", "{train}", "--seed", str(2**70)],
        ["learn", "{pool}", "--task", "x", "--train", "{train}", "--seed", "-1"],
        ["run", "--seed", str(2**64), "--out", "{tmp}/run"],
    ],
)
def test_seeds_out_of_range_are_one_line(argv, built, data, tmp_path):
    argv = [a.format(pool=built, train=data.colours, tmp=tmp_path) for a in argv]
    one_line(*invoke(*argv), "--seed", "from 0 to")


def test_tokens_beyond_the_vocabulary_are_one_line(built, model_dir):
    one_line(
        *invoke("explain", built, "--tokens", str(10**9), "--backbone", model_dir),
        "--tokens",
        "vocabulary size",
    )


@pytest.mark.parametrize("option", ["--epochs", "--orders", "--train-per-label"])
def test_run_refuses_zero_like_learn(option, tmp_path):
    one_line(*invoke("run", option, "0", "--out", tmp_path / "run"), option, "at least 1")
    assert not (tmp_path / "run").exists()


MANIFEST_EDITS = {
    "backbone.max_length text": (("backbone", "max_length"), "64"),
    "backbone.max_length zero": (("backbone", "max_length"), 0),
    "backbone.query_layer zero": (("backbone", "query_layer"), 0),
    "backbone.query_layer float": (("backbone", "query_layer"), 1.5),
    "backbone.weights_sha256 number": (("backbone", "weights_sha256"), 5),
    "backbone.name list": (("backbone", "name"), ["x"]),
    "backbone.hidden_size text": (("backbone", "hidden_size"), "32"),
    "training.batch_size zero": (("training", "batch_size"), 0),
    "training.epochs text": (("training", "epochs"), "3"),
    "training.epochs true": (("training", "epochs"), True),
    "training.prompt_lr negative": (("training", "prompt_lr"), -1),
    "training.head_lr huge": (("training", "head_lr"), 1e400),
    "training.patience float": (("training", "patience"), 1.5),
    "training.prompt_init unknown": (("training", "prompt_init"), "magic"),
    "training.prompt_text number": (("training", "prompt_text"), 3),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS))
def test_manifest_values_of_the_wrong_type_or_range_are_named(pool_copy, model_dir, data, edit):
    (section, key), value = MANIFEST_EDITS[edit]
    text = (pool_copy / MANIFEST).read_text()
    manifest = json.loads(text)
    manifest[section][key] = value
    (pool_copy / MANIFEST).write_text(json.dumps(manifest).replace("Infinity", "1e400"))
    for argv in (
        ["predict", pool_copy, "a red rose", "--backbone", model_dir],
        [
            "learn",
            pool_copy,
            "--task",
            "more",
            "--train",
            data.colours,
            "--backbone",
            model_dir,
            "--no-progress",
        ],
    ):
        line = one_line(*invoke(*argv), str(pool_copy), key)
        assert section in line, line


def test_an_unexpected_failure_is_one_line_with_exit_1_and_a_traceback_only_on_debug(
    built, monkeypatch
):
    import continual.manage

    def broken(pool_dir):
        raise RuntimeError("something\nnobody expected")

    monkeypatch.setattr(continual.manage, "pool_info", broken)
    line = one_line(
        *invoke("info", built),
        "RuntimeError",
        "something nobody expected",
        "report",
        "--debug",
        exit_code=1,
    )
    assert "bug" in line
    for argv in (["--debug", "info", built], ["info", built, "--debug"]):
        code, _, err = invoke(*argv)
        assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1] == line


@pytest.mark.parametrize(
    "argv",
    [
        ["learn"],
        ["learn", "p", "--task", "t"],
        ["predict"],
        ["learn", "p", "--task", "t", "--train", "x", "--seed", "one"],
        ["nonsense"],
        ["predict", "", "text"],
    ],
)
def test_usage_errors_are_one_line_exit_2(argv):
    one_line(*invoke(*argv))


# -- data read as written, outputs safe to parse and print -----------------------------------------


@pytest.mark.parametrize(
    "header, duplicated",
    [("text,label,label", "'label'"), ("text,text,label", "'text'"), ("id,text,label,id", "'id'")],
)
def test_duplicated_csv_headers_are_refused_naming_them(tmp_path, header, duplicated):
    path = tmp_path / "d.csv"
    path.write_text(
        header + "\n" + ",".join(["a", "b", "c", "d"][: header.count(",") + 1]) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(TaskDataError) as error:
        Task.from_files("t", path)
    assert str(path) in str(error.value) and duplicated in str(error.value)
    assert "duplicated column" in str(error.value)


@pytest.mark.parametrize("label", ["1", "1e2", "true", "null", "[1]", "{}", "2.5"])
def test_json_labels_must_be_strings(tmp_path, label):
    path = tmp_path / "l.jsonl"
    path.write_text(
        '{"text": "a", "label": "1"}\n{"text": "b", "label": ' + label + "}\n", encoding="utf-8"
    )
    with pytest.raises(TaskDataError) as error:
        Task.from_files("t", path)
    message = str(error.value)
    assert str(path) in message and "row 2" in message and "'label'" in message
    assert "string" in message or "missing" in message  # null is a missing label


def test_an_empty_task_name_blames_the_name_not_the_file(data, pool_copy):
    with pytest.raises(TaskDataError) as error:
        Task.from_files(" ", data.colours)
    assert str(data.colours) not in str(error.value) and "task name" in str(error.value)
    line = one_line(
        *invoke("learn", pool_copy, "--task", "", "--train", data.colours, *LEARN), "--task"
    )
    assert str(data.colours) not in line


def _strict_json(line: str):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant} in {line}")

    return json.loads(line, parse_constant=refuse)


def test_predictions_are_strict_json_even_when_scores_are_nan(pool_copy, model_dir):
    path = task_path(pool_copy)
    tensors = load_safetensors(path.read_bytes())
    tensors["head.bias"] = torch.full_like(tensors["head.bias"], float("nan"))
    data = save_safetensors(tensors)
    path.write_bytes(data)
    edit_manifest(
        pool_copy, lambda m: m["tasks"][0].update(sha256=hashlib.sha256(data).hexdigest())
    )
    code, out, err = invoke(
        "predict", pool_copy, "a red rose", "--task", "colours", "--backbone", model_dir
    )
    assert code == 0, err
    assert _strict_json(out)["score"] is None
    code, out, err = invoke("explain", pool_copy, "a red rose", "--backbone", model_dir)
    assert code == 0, err
    for line in out.splitlines():
        if line.startswith("{"):
            _strict_json(line)


def test_info_escapes_control_characters_in_names(pool_copy):
    evil = "evil\x1b[2J\x07\rname\u202e"

    def change(manifest):
        manifest["tasks"][0]["name"] = evil
        manifest["tasks"][0]["labels"] = ["\x1b[31mcool", "warm"]
        manifest["backbone"]["name"] = "org/\x1b]0;title\x07"

    edit_manifest(pool_copy, change)
    code, out, err = invoke("info", pool_copy)
    assert code == 0, err
    assert not any(ch in out for ch in "\x1b\x07\r\u202e")
    assert "evil\\x1b[2J\\x07\\rname\\u202e" in out
    code, out, _ = invoke("info", pool_copy, "--json")
    assert json.loads(out)["tasks"][0]["name"] == evil  # JSON keeps the name exact


def test_a_full_disk_names_the_file_and_leaves_the_pool(pool_copy, data, model_dir, monkeypatch):
    import continual.files

    def full(handle, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = snapshot(pool_copy, skip=lambda r: r == ".lock")
    monkeypatch.setattr(continual.files, "_write_all", full)
    line = one_line(
        *invoke(
            "learn",
            pool_copy,
            "--task",
            "more",
            "--train",
            data.colours,
            "--backbone",
            model_dir,
            *LEARN,
        ),
        "No space left on device",
    )
    assert str(pool_copy / "tasks" / "task-") in line or str(pool_copy / MANIFEST) in line
    assert snapshot(pool_copy, skip=lambda r: r == ".lock") == before


# -- nothing outside the pool, and nothing in it that is not the pool's, is ever changed ----------


def _pool_owned(relative: str) -> bool:
    """Files a pool writes itself: its manifest, lock and content-addressed task files."""
    import re

    return bool(
        relative in (MANIFEST, ".lock", "tasks")
        or re.fullmatch(r"tasks/task-[0-9a-f]{32}\.safetensors", relative)
    )


def _plant_sentinels(root: Path, pool: Path) -> None:
    outside = root / "outside"
    (outside / "tasks").mkdir(parents=True)
    (outside / "a.txt").write_text("outside a")
    (outside / ".lock").write_text("someone else's lock")
    (outside / MANIFEST).write_text('{"not": "a pool"}')
    (outside / "tasks" / f"task-{'1' * 32}.safetensors").write_bytes(b"lookalike outside")
    (root / "beside.csv").write_text("text,label\n")
    os.mkfifo(root / "beside-fifo.csv")
    inside = {
        "README.txt": b"my notes about this pool",
        "tasks/task-1.csv": b"text,label\nthe data,x\n",
        "tasks/keep.txt": b"keep me",
        f"tasks/task-{'2' * 31}.safetensors": b"31 hex",
        f"tasks/task-{'3' * 32}.safetensors.orig": b"suffixed",
        f".{MANIFEST}.backup": b"{}",
    }
    for name, content in inside.items():
        (pool / name).write_bytes(content)
    (pool / "link-out").symlink_to(outside / "a.txt")
    (pool / "tasks" / "link-task").symlink_to(outside / "tasks" / f"task-{'1' * 32}.safetensors")
    (pool / "tasks" / "dir-in-tasks").mkdir()
    (pool / "tasks" / "dir-in-tasks" / "x").write_text("x")


def test_no_code_path_writes_or_deletes_outside_what_the_pool_made(
    pool_copy, data, model_dir, tiny_pool_factory, synthetic_tasks
):
    """Learn (new task, failed), export, import, remove, save (growing and shrinking, so cleanup
    runs) and learn into a new pool beside it, with a sentinel tree around and inside the pool:
    every sentinel, and every file a symlink in the pool points to, is the same byte for byte
    afterwards."""
    root = pool_copy.parent
    _plant_sentinels(root, pool_copy)

    def ignore(relative):
        return relative in ("pool", "newpool", "export", "export/t.st") or (
            relative.startswith(("pool/", "newpool/")) and _pool_owned(relative.split("/", 1)[1])
        )

    before = snapshot(root, skip=ignore)
    checks = 0

    def check(step: str) -> None:
        nonlocal checks
        after = snapshot(root, skip=ignore)
        assert after == before, f"after {step}: changed {set(after.items()) ^ set(before.items())}"
        checks += len(before)

    operations = [
        (
            "learn a new task",
            [
                "learn",
                pool_copy,
                "--task",
                "third",
                "--train",
                data.colours,
                "--backbone",
                model_dir,
                *LEARN,
            ],
            0,
        ),
        (
            "learn an existing name",
            [
                "learn",
                pool_copy,
                "--task",
                "colours",
                "--train",
                data.colours,
                "--backbone",
                model_dir,
                *LEARN,
            ],
            2,
        ),
        (
            "learn bad data",
            [
                "learn",
                pool_copy,
                "--task",
                "x",
                "--train",
                root / "beside.csv",
                "--backbone",
                model_dir,
                *LEARN,
            ],
            2,
        ),
        (
            "learn a FIFO",
            [
                "learn",
                pool_copy,
                "--task",
                "x",
                "--train",
                root / "beside-fifo.csv",
                "--backbone",
                model_dir,
                *LEARN,
            ],
            2,
        ),
        (
            "learn into outside/",
            [
                "learn",
                root / "outside",
                "--task",
                "x",
                "--train",
                data.colours,
                "--backbone",
                model_dir,
                *LEARN,
            ],
            2,
        ),
        (
            "learn a new pool beside",
            [
                "learn",
                root / "newpool",
                "--task",
                "x",
                "--train",
                data.colours,
                "--backbone",
                model_dir,
                *LEARN,
            ],
            0,
        ),
        ("predict", ["predict", pool_copy, "a red rose", "--backbone", model_dir], 0),
        ("info", ["info", pool_copy], 0),
        ("export", ["export", pool_copy, "--task", "third", "--out", root / "export" / "t.st"], 0),
        (
            "import under another name",
            ["import", pool_copy, root / "export" / "t.st", "--as", "fourth"],
            0,
        ),
        ("import a name clash", ["import", pool_copy, root / "export" / "t.st"], 2),
        ("import a file beside the pool", ["import", pool_copy, root / "beside.csv"], 2),
        ("import into outside/", ["import", root / "outside", root / "export" / "t.st"], 2),
        ("remove", ["remove", pool_copy, "--task", "fourth"], 0),
        ("remove an unknown task", ["remove", pool_copy, "--task", "nope"], 2),
        ("remove from outside/", ["remove", root / "outside", "--task", "x"], 2),
    ]
    (root / "export").mkdir()  # export makes no folder
    for step, argv, expected in operations:
        code, _, err = finishes(invoke, *argv)
        assert code == expected, (step, err)
        check(step)
    grown = PromptPool.load(pool_copy, backbone=str(model_dir))
    grown.save(pool_copy)
    check("save the loaded pool")
    shrunk = PromptPool.load(pool_copy, backbone=str(model_dir))
    shrunk.entries = shrunk.entries[:1]  # fewer tasks: the others' files become unreferenced
    shrunk.save(pool_copy)
    check("save a smaller pool (cleanup)")
    owned = [p for p in (pool_copy / "tasks").iterdir() if _pool_owned(f"tasks/{p.name}")]
    assert len(owned) == 1  # the dropped tasks' files went
    other = tiny_pool_factory()
    other.learn(synthetic_tasks[0], progress=False)
    for target in (root / "outside", root, root / "outside" / "tasks"):
        with pytest.raises(PoolFormatError):
            other.save(target)
        check(f"save into {target.name}")
    assert checks > 0
    record_counts(
        "sentinel checks",
        {"checks": checks, "steps": len(operations) + 5, "sentinels": len(before)},
    )


# -- generated non-pool folders -------------------------------------------------------------------

POOLISH = [
    ".lock",
    "tasks/",
    f"tasks/task-{'a' * 32}.safetensors",
    f"tasks/.task-{'b' * 32}.safetensors.0123456789abcdef.tmp",
    f".{MANIFEST}.abcd1234.tmp",
]
FOREIGN = [
    "notes.txt",
    "tasks/task-1.csv",
    f"tasks/task-{'c' * 31}.safetensors",
    "tasks/x.tmp",
    ".manifest.json.bak",
    "data/",
    "manifest.json.orig",
    "TASKS/",
    f"tasks/task-{'A' * 32}.safetensors",
    ".lock.old",
    "link->",
    "tasks/link->",
]


@prop(60, names=st.lists(st.sampled_from(POOLISH + FOREIGN), max_size=6, unique=True))
def test_save_into_a_generated_folder_refuses_anything_not_the_pools(
    tmp_path, names, tiny_pool_factory, synthetic_tasks, trained_entry
):
    """A folder holding only what a pool writes (or nothing) is taken; one holding anything else
    is refused with PoolFormatError and left exactly as it was."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    folder = root / "pool"
    folder.mkdir()
    outside = root / "outside.txt"
    outside.write_text("outside")
    for name in names:
        path = folder / name.rstrip("/").removesuffix("->")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        elif name.endswith("->"):
            path.symlink_to(outside)
        else:
            path.write_bytes(name.encode())
    before = snapshot(root)
    pool = tiny_pool_factory()
    pool.add(trained_entry)
    foreign = [name for name in names if name in FOREIGN]
    if foreign:
        with pytest.raises(PoolFormatError, match="not a pool"):
            pool.save(folder)
        assert snapshot(root) == before
    else:
        pool.save(folder)
        assert PromptPool.load(folder, pool.backbone).tasks == [trained_entry.name]
        assert outside.read_text() == "outside"


@pytest.fixture(scope="module")
def trained_entry(tiny_backbone, synthetic_tasks):
    from continual import TrainingConfig

    pool = PromptPool(
        tiny_backbone, prompt_length=4, selector="prototypes", training=TrainingConfig(epochs=1)
    )
    return pool.learn(synthetic_tasks[0], progress=False)


@pytest.fixture(scope="module", autouse=True)
def every_property_ran_its_examples():
    yield
    prop.check_every_property_ran("boundaries")
