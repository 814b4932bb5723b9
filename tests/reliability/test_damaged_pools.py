"""Reliability of pool files: damaged, foreign, hand-edited and hostile pools are refused.

A small pool (tiny random BERT, two synthetic tasks, one epoch) is saved once per module; each
test damages a copy and checks that `PromptPool.load` raises `PoolFormatError` saying what is
wrong (and what to do, where there is something to do). Nothing in a pool is ever unpickled: a
pickle planted as a task file is refused by the format check and its payload never runs.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _counted import CountedProperties
from hypothesis import HealthCheck
from hypothesis import strategies as st
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import continual
from continual import Backbone, PoolFormatError, PromptPool, TrainingConfig
from continual.storage import MANIFEST

SETTINGS = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
prop = CountedProperties(**SETTINGS)
RUNS, EXPECTED = prop.runs, prop.expected


# -- a saved pool and ways to damage it ---------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tiny_backbone, synthetic_tasks, tmp_path_factory):
    """Pool A (colours, animals; seed 0) and pool B (the same tasks, seed 1), both saved."""
    root = tmp_path_factory.mktemp("reliability-pool")
    pools = {}
    for name, seed in (("a", 0), ("b", 1)):
        pool = PromptPool(tiny_backbone, prompt_length=4, training=TrainingConfig(epochs=1))
        for task in synthetic_tasks:
            pool.learn(task, seed=seed, progress=False)
        pools[name] = pool
        pool.save(root / name)
    manifest = json.loads((root / "a" / MANIFEST).read_text())
    return SimpleNamespace(a=root / "a", b=root / "b", pool=pools["a"], manifest=manifest)


@pytest.fixture
def pool_dir(saved, tmp_path) -> Path:
    """A fresh copy of pool A to damage."""
    target = tmp_path / "pool"
    shutil.copytree(saved.a, target)
    return target


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def write_manifest(directory: Path, manifest: object) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def edit_manifest(directory: Path, change) -> None:
    manifest = manifest_of(directory)
    change(manifest)
    write_manifest(directory, manifest)


def task_file(directory: Path, index: int = 0) -> Path:
    return directory / manifest_of(directory)["tasks"][index]["file"]


def plant(directory: Path, index: int, data: bytes, name: str = "tasks/task-edited.safetensors"):
    """Put ``data`` in the pool as task ``index``'s file and re-hash it in the manifest, so the
    checksum passes and only the later checks can refuse it."""
    (directory / name).parent.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)

    def change(manifest):
        manifest["tasks"][index]["file"] = name
        manifest["tasks"][index]["sha256"] = hashlib.sha256(data).hexdigest()

    edit_manifest(directory, change)


def retensor(directory: Path, index: int, change) -> None:
    """Edit task ``index``'s tensors with ``change(dict)`` and plant them re-hashed."""
    tensors = load_safetensors(task_file(directory, index).read_bytes())
    change(tensors)
    plant(directory, index, save_safetensors(tensors))


def refused(directory: Path, backbone: Backbone, *fragments: str) -> str:
    """Load must raise PoolFormatError whose message holds every fragment; returns it."""
    with pytest.raises(PoolFormatError) as error:
        PromptPool.load(directory, backbone)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_the_undamaged_copy_loads_and_predicts_like_the_original(
    pool_dir, saved, tiny_backbone, synthetic_tasks
):
    loaded = PromptPool.load(pool_dir, tiny_backbone)
    texts = [text for text, _ in synthetic_tasks[0].test + synthetic_tasks[1].test]
    assert [(p.task, p.label, p.score) for p in loaded.predict(texts)] == [
        (p.task, p.label, p.score) for p in saved.pool.predict(texts)
    ]


# -- damaged task files ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 7, 8, 100, 0.5, -1])
def test_truncated_task_file(pool_dir, tiny_backbone, keep):
    path = task_file(pool_dir)
    data = path.read_bytes()
    keep = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:keep])
    refused(pool_dir, tiny_backbone, str(path), "checksum mismatch", "restore it from a backup")
    # The same truncation re-hashed in the manifest: the safetensors check refuses it.
    plant(pool_dir, 0, data[:keep])
    refused(pool_dir, tiny_backbone, "task-edited.safetensors", "not a valid safetensors file")


@prop(
    40, position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), index=st.integers(0, 1)
)
def test_a_flipped_bit_anywhere_in_a_task_file_is_caught(
    pool_dir, tiny_backbone, position, bit, index
):
    path = task_file(pool_dir, index)
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[int(position * len(damaged))] ^= 1 << bit
    path.write_bytes(bytes(damaged))
    try:
        refused(pool_dir, tiny_backbone, str(path), "checksum mismatch")
    finally:
        path.write_bytes(original)


@prop(60, position=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_a_flipped_header_bit_re_hashed_loads_or_is_a_format_error(
    pool_dir, saved, tiny_backbone, position, bit
):
    """With the checksum updated too, a flip in the safetensors header (length, names, dtypes,
    shapes, offsets) is refused by the format checks, or leaves a well-formed file."""
    original = (saved.a / saved.manifest["tasks"][0]["file"]).read_bytes()
    header = 8 + int.from_bytes(original[:8], "little")
    damaged = bytearray(original)
    damaged[position % header] ^= 1 << bit
    plant(pool_dir, 0, bytes(damaged))
    try:
        pool = PromptPool.load(pool_dir, tiny_backbone)
    except PoolFormatError:
        return
    entry = pool.entries[0]
    assert entry.prompt.dtype == torch.float32 and tuple(entry.prompt.shape) == (4, 32)


def test_task_files_swapped_between_two_pools(pool_dir, saved, tiny_backbone):
    ours, theirs = task_file(pool_dir, 0), saved.b / manifest_of(saved.b)["tasks"][0]["file"]
    assert ours.read_bytes() != theirs.read_bytes()
    ours.write_bytes(theirs.read_bytes())
    refused(pool_dir, tiny_backbone, str(ours), "checksum mismatch", "was replaced")


def test_task_files_swapped_within_a_pool(pool_dir, tiny_backbone):
    first, second = task_file(pool_dir, 0), task_file(pool_dir, 1)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    refused(pool_dir, tiny_backbone, "checksum mismatch")


def test_a_manifest_copied_into_another_pool(pool_dir, saved, tiny_backbone):
    shutil.copy(saved.b / MANIFEST, pool_dir / MANIFEST)
    refused(pool_dir, tiny_backbone, "task file missing", "the pool is incomplete")


# -- hand-edited manifests -----------------------------------------------------------------------


def _set(path: tuple, value):
    def change(manifest):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _remove(path: tuple):
    def change(manifest):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


EDITS = {
    # changed checksum
    "sha256 changed": (_set(("tasks", 0, "sha256"), "0" * 64), "checksum mismatch"),
    "sha256 of the other task": (
        lambda m: m["tasks"][0].update(sha256=m["tasks"][1]["sha256"]),
        "checksum mismatch",
    ),
    # removed fields
    **{
        f"no {key}": (_remove((key,)), repr(key))
        for key in ("format", "backbone", "tasks", "prompt_length", "hidden_size", "selector")
    },
    "no format_version": (_remove(("format_version",)), "format_version None"),
    **{
        f"no task {key}": (_remove(("tasks", 0, key)), f"field {key!r}")
        for key in ("name", "labels", "file", "sha256")
    },
    "no backbone hash": (_remove(("backbone", "weights_sha256")), "weights_sha256 differs"),
    "no backbone max_length": (_remove(("backbone", "max_length")), "max_length"),
    # wrong types
    "prompt_length text": (_set(("prompt_length",), "4"), "'prompt_length'"),
    "hidden_size float": (_set(("hidden_size",), 32.5), "'hidden_size'"),
    "tasks object": (_set(("tasks",), {"colours": {}}), "'tasks'"),
    "task a string": (_set(("tasks", 0), "colours"), "expected an object"),
    "name a number": (_set(("tasks", 0, "name"), 7), "'name'"),
    "labels a string": (_set(("tasks", 0, "labels"), "cool,warm"), "'labels'"),
    "labels numbers": (_set(("tasks", 0, "labels"), [0, 1]), "'labels'"),
    "file a number": (_set(("tasks", 0, "file"), 3), "'file'"),
    "sha256 null": (_set(("tasks", 0, "sha256"), None), "'sha256'"),
    "selector a string": (_set(("selector",), "gaussian"), "'selector'"),
    "selector unknown": (_set(("selector",), {"name": "magic"}), "'selector'"),
    "selector setting": (_set(("selector", "shrinkage"), "high"), "'selector'"),
    "training a list": (_set(("training",), []), "'training'"),
    "training unknown key": (_set(("training", "rocket"), 1), "'training'"),
    "stats a string": (_set(("tasks", 0, "stats"), "fast"), "task 0"),
    "backbone a list": (_set(("backbone",), []), "'backbone'"),
    "hidden_size changed": (_set(("hidden_size",), 48), "hidden_size 48"),
    "format other": (_set(("format",), "pickle"), "'format'"),
    # label lists that do not fit the head
    "one label": (_set(("tasks", 0, "labels"), ["warm"]), "at least 2 strings"),
    "three labels": (_set(("tasks", 0, "labels"), ["cool", "warm", "hot"]), "head shape"),
    # task files outside tasks/
    **{
        f"file {name}": (_set(("tasks", 0, "file"), name), "bad task file name")
        for name in (
            "../outside.safetensors",
            "tasks/../../outside.safetensors",
            "tasks/../manifest.json",
            "/etc/passwd",
            "manifest.json",
            "tasks/a\x00b",
            "",
            "tasks/../tasks/../../outside.safetensors",
        )
    },
    "file the tasks folder": (_set(("tasks", 0, "file"), "tasks/"), "cannot read the task file"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_hand_edited_manifest_is_refused_saying_what(pool_dir, tiny_backbone, edit, tmp_path):
    change, fragment = EDITS[edit]
    # A valid task file just outside the pool: only the name check can stop "../" from reading it.
    shutil.copy(task_file(pool_dir, 0), tmp_path / "outside.safetensors")
    edit_manifest(pool_dir, change)
    message = refused(pool_dir, tiny_backbone, fragment)
    if edit == "three labels":
        # Shape errors come from PromptPool.add: they name the task, not the pool folder.
        assert "task 'colours'" in message
    else:
        assert str(pool_dir) in message


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\xff\xfe{}",
        b"[]",
        b"null",
        b"\xef\xbb\xbf{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"format": 1' + b"0" * 5000 + b"}",
    ],
)
def test_unreadable_manifest_is_refused(pool_dir, tiny_backbone, content):
    (pool_dir / MANIFEST).write_bytes(content)
    refused(pool_dir, tiny_backbone, str(pool_dir / MANIFEST))


@pytest.mark.parametrize("version", [0, 2, "1", None, 1.5, [1]])
def test_unknown_format_version(pool_dir, tiny_backbone, version):
    edit_manifest(pool_dir, _set(("format_version",), version))
    refused(
        pool_dir,
        tiny_backbone,
        "format_version",
        "is not supported",
        "use the continual release that wrote it",
    )


TENSOR_EDITS = {
    "prompt too long": (lambda t: t.update(prompt=torch.zeros(5, 32)), "prompt shape (5, 32)"),
    "prompt too narrow": (lambda t: t.update(prompt=torch.zeros(4, 16)), "prompt shape (4, 16)"),
    "prompt 3-d": (lambda t: t.update(prompt=torch.zeros(4, 32, 1)), "prompt shape"),
    "prompt empty": (lambda t: t.update(prompt=torch.zeros(0, 32)), "prompt shape"),
    "head for 3 labels": (lambda t: t.update({"head.weight": torch.zeros(3, 32)}), "head shape"),
    "bias wrong": (lambda t: t.update({"head.bias": torch.zeros(2, 2)}), "head shape"),
    "no bias": (lambda t: t.pop("head.bias"), "missing tensors ['head.bias']"),
    "no prompt": (lambda t: t.pop("prompt"), "missing tensors ['prompt']"),
    "selector state narrow": (
        lambda t: t.update({"selector.mean": torch.zeros(16)}),
        "selector state 'mean'",
    ),
    "selector state scalar": (
        lambda t: t.update({"selector.mean": torch.tensor(1.0)}),
        "selector state 'mean'",
    ),
    "prompt float64": (lambda t: t.update(prompt=t["prompt"].double()), "torch.float64"),
    "prompt int32": (lambda t: t.update(prompt=t["prompt"].to(torch.int32)), "torch.int32"),
    "head float16": (lambda t: t.update({"head.weight": t["head.weight"].half()}), "torch.float16"),
}


@pytest.mark.parametrize("edit", list(TENSOR_EDITS))
def test_task_tensors_of_the_wrong_shape_or_type_re_hashed(pool_dir, tiny_backbone, edit):
    """The checksum passes (the manifest was re-hashed): the shape and dtype checks refuse."""
    change, fragment = TENSOR_EDITS[edit]
    retensor(pool_dir, 0, change)
    refused(pool_dir, tiny_backbone, fragment)


# -- another backbone ----------------------------------------------------------------------------


def test_a_backbone_with_other_weights_is_refused(pool_dir, tokenizer, make_tiny_model):
    other = Backbone(make_tiny_model(1), tokenizer, "tiny-bert", max_length=32)
    refused(pool_dir, other, "weights_sha256 differs", "load the backbone the pool was built on")


def test_a_backbone_of_another_width_is_refused(pool_dir, tokenizer):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    wide = Backbone(BertModel(config), tokenizer, "tiny-bert", max_length=32)
    refused(
        pool_dir, wide, "hidden_size differs: 32 vs 48", "load the backbone the pool was built on"
    )


# -- hostile files: nothing is unpickled -----------------------------------------------------------


class _Shell:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _Opener:
    """Unpickling this creates (opens for writing) a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _raw_pickle(payload) -> bytes:
    return pickle.dumps({"prompt": payload}, protocol=4)


def _torch_zip(payload) -> bytes:
    buffer = io.BytesIO()
    torch.save({"prompt": payload}, buffer)  # a zip holding a pickle: what torch.load reads
    return buffer.getvalue()


@pytest.mark.parametrize("gadget", [_Shell, _Opener])
@pytest.mark.parametrize("container", [_raw_pickle, _torch_zip])
@pytest.mark.parametrize("name", ["tasks/task-edited.safetensors", "tasks/prompt.pt"])
def test_a_pickle_planted_as_a_task_file_is_refused_and_never_runs(
    pool_dir, tiny_backbone, tmp_path, gadget, container, name
):
    # The payload is live: unpickling a twin of it creates its marker.
    control = tmp_path / "control-marker"
    twin = _raw_pickle(gadget(control))
    result = pickle.loads(twin)  # our own payload, to prove the planted one would fire
    if hasattr(result.get("prompt"), "close"):
        result["prompt"].close()
    assert control.exists()

    marker = tmp_path / "PWNED"
    plant(pool_dir, 0, container(gadget(marker)), name)  # checksum updated: it passes
    refused(pool_dir, tiny_backbone, "not a valid safetensors file")
    assert not marker.exists(), "loading the pool ran the pickle's payload"
    # The command line's info refuses it too (exit 2), without unpickling anything.
    from continual.cli import main

    assert main(["info", str(pool_dir)]) == 2
    assert not marker.exists()


def test_no_unpickling_or_remote_code_anywhere_in_the_package():
    root = Path(continual.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert len(sources) >= 15, sources
    forbidden = [
        r"\bpickle\.loads?\(",
        r"\bimport\s+pickle\b",
        r"\bfrom\s+pickle\b",
        r"\bdill\b",
        r"\btorch\.load\(",
        r"\bjoblib\.load\(",
        r"allow_pickle\s*=\s*True",
        r"weights_only\s*=\s*False",
        r"trust_remote_code\s*=\s*True",
        r"\bcloudpickle\b",
    ]
    found = [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for pattern in forbidden
        if re.search(pattern, line)
    ]
    assert not found, "\n".join(found)


# -- fuzzed manifests --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["colours", "animals", "tasks/", "../x", "gaussian", "prototypes"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value, prefix=()) -> list[tuple]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value[:4]):
            paths += _paths(child, prefix + (index,))
    return paths


@prop(150, data=st.data())
def test_fuzzed_manifest_loads_or_is_a_format_error(pool_dir, saved, tiny_backbone, data):
    """Any one field replaced by any JSON value, or removed: load succeeds or raises
    PoolFormatError, never another exception."""
    paths = _paths(saved.manifest)
    path = data.draw(st.sampled_from(paths), label="path")
    manifest = copy.deepcopy(saved.manifest)
    if data.draw(st.booleans(), label="remove"):
        _remove(path)(manifest)
    else:
        _set(path, data.draw(json_values, label="value"))(manifest)
    write_manifest(pool_dir, manifest)
    try:
        PromptPool.load(pool_dir, tiny_backbone)
    except PoolFormatError:
        pass


# -- manifests whose parts do not fit together --------------------------------------------------


def test_manifest_with_a_duplicated_task_name(pool_dir, tiny_backbone):
    edit_manifest(pool_dir, _set(("tasks", 1, "name"), "colours"))
    refused(pool_dir, tiny_backbone, "colours")


def test_manifest_with_a_prompt_too_long_for_the_model(pool_dir, tiny_backbone):
    edit_manifest(pool_dir, _set(("prompt_length",), 200))
    refused(pool_dir, tiny_backbone, "prompt_length")


@pytest.mark.parametrize(
    "edit",
    [
        "selector switched",
        "state missing",
        "covariance rows",
        "min_score not a number",
        "duplicate labels",
        "empty name",
        "version true",
    ],
)
def test_manifest_parts_that_do_not_fit_are_refused(pool_dir, tiny_backbone, edit):
    if edit == "selector switched":
        edit_manifest(pool_dir, _set(("selector",), {"name": "prototypes"}))
    elif edit == "state missing":
        retensor(pool_dir, 0, lambda t: t.pop("selector.mean"))
    elif edit == "covariance rows":
        retensor(pool_dir, 0, lambda t: t.update({"selector.covariance": torch.zeros(5, 32)}))
    elif edit == "min_score not a number":
        edit_manifest(pool_dir, _set(("selector", "min_score"), "x"))
    elif edit == "duplicate labels":
        edit_manifest(pool_dir, _set(("tasks", 0, "labels"), ["a", "a"]))
    elif edit == "empty name":
        edit_manifest(pool_dir, _set(("tasks", 0, "name"), " "))
    else:
        edit_manifest(pool_dir, _set(("format_version",), True))
    with pytest.raises(PoolFormatError) as error:
        PromptPool.load(pool_dir, tiny_backbone)
    assert str(pool_dir) in str(error.value)


# -- pool parts that are links, FIFOs, devices, folders or too large ------------------------------

PART_KINDS = [
    "symlink to a copy outside",
    "symlink to dev/zero",
    "fifo",
    "folder",
    "oversized",
    "broken symlink",
    "symlink loop",
]
PARTS = ["manifest", "task file", "tasks folder", "lock"]


def _replace_part(pool: Path, part: str, kind: str, outside: Path) -> Path:
    """Turn one part of the pool into ``kind``; returns the path changed."""
    path = {
        "manifest": pool / MANIFEST,
        "task file": task_file(pool, 0),
        "tasks folder": pool / "tasks",
        "lock": pool / ".lock",
    }[part]
    copy = outside / f"copy-of-{path.name}"
    if path.is_dir():
        shutil.copytree(path, copy)
        shutil.rmtree(path)
    elif path.exists():
        shutil.copy(path, copy)
        path.unlink()
    else:
        copy.write_text("outside")
    if kind == "symlink to a copy outside":
        path.symlink_to(copy)
    elif kind == "symlink to dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "broken symlink":
        path.symlink_to(outside / "nowhere")
    elif kind == "symlink loop":
        path.symlink_to(path)
    else:  # oversized: the same bytes, under a limit set just below their size
        if copy.is_dir():
            shutil.copytree(copy, path)
        else:
            shutil.copy(copy, path)
    return path


def _tree(root: Path) -> dict:
    state = {}
    for directory, folders, names in os.walk(root, followlinks=False):
        for name in folders + names:
            path = Path(directory) / name
            state[str(path)] = (
                os.readlink(path)
                if path.is_symlink()
                else path.read_bytes()
                if path.is_file()
                else "other"
            )
    return state


# 4 parts x 7 kinds: 28 distinct cases, each run once (hypothesis stops when all are seen).
@prop(28, part=st.sampled_from(PARTS), kind=st.sampled_from(PART_KINDS))
def test_pool_parts_that_are_links_fifos_devices_or_too_large_are_refused(
    saved, tiny_backbone, tmp_path, monkeypatch, part, kind
):
    """Load and save refuse (PoolFormatError naming the part) without blocking, following a
    link or reading past a limit; whatever lies outside the pool is left byte for byte."""
    import tempfile

    from continual import files

    root = Path(tempfile.mkdtemp(dir=tmp_path))
    pool = root / "pool"
    shutil.copytree(saved.a, pool)
    outside = root / "outside"
    outside.mkdir()
    path = _replace_part(pool, part, kind, outside)
    with monkeypatch.context() as patch:  # each example sets its own limits
        if kind == "oversized":
            limit = {
                "manifest": "MAX_MANIFEST_BYTES",
                "task file": "MAX_TASK_FILE_BYTES",
                "tasks folder": "MAX_TASK_FILE_BYTES",
                "lock": None,
            }[part]
            if limit is None:
                return  # a lock's size is not read
            patch.setattr(files, limit, 100)
        _refused_everywhere(saved, tiny_backbone, pool, path, part, kind, outside)


def _refused_everywhere(saved, tiny_backbone, pool, path, part, kind, outside) -> None:
    from continual.storage import check_pool_folder

    before = _tree(outside)
    if part != "lock" and not (part == "tasks folder" and kind == "oversized"):
        with pytest.raises(PoolFormatError) as error:
            PromptPool.load(pool, tiny_backbone)
        assert str(path) in str(error.value) or path.name in str(error.value), str(error.value)
    # A task file is the pool's to replace, and an empty tasks/ folder a pool's own shape.
    if part != "task file" and kind != "oversized" and (part, kind) != ("tasks folder", "folder"):
        with pytest.raises(PoolFormatError):
            check_pool_folder(pool)
        with pytest.raises(PoolFormatError):
            saved.pool.save(pool)
    assert _tree(outside) == before


@pytest.fixture(scope="module", autouse=True)
def every_property_ran_its_examples():
    """When the module is done: every property that ran reached its max_examples."""
    yield
    prop.check_every_property_ran("damaged pools")
