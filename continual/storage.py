"""A pool on disk: a JSON manifest and one safetensors file per task, written so a crash loses nothing.

Layout::

    POOL/manifest.json                 format, backbone fingerprint, settings, tasks + sha256
    POOL/tasks/task-<sha256>.safetensors  one task's prompt, head and selector state
    POOL/.lock                         held by a process that changes the pool

Task files are named by their content hash and never rewritten, so an earlier task's file stays
bit-identical. The manifest is replaced atomically and is the single commit point: a crash
before it leaves the previous manifest, which names only complete files. Loading reads JSON and
safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import files
from .data import Generation
from .entry import TaskEntry
from .errors import ContinualError, PoolFormatError
from .format import FORMAT, PoolConfig

MANIFEST = "manifest.json"
TASKS_DIR = "tasks"
LOCK = ".lock"

# The only names a pool writes: its task files, and the temporaries of an atomic write (from
# this version, ``.<name>.<16 hex>.tmp``; earlier ones used mkstemp's 8 characters). Cleanup
# deletes nothing else, and a folder holding anything else is not taken for a pool.
TASK_FILE = re.compile(r"task-[0-9a-f]{32}\.safetensors")
_TEMPORARY = r"\.{name}\.[A-Za-z0-9_]{{6,32}}\.tmp"
TASK_TEMPORARY = re.compile(_TEMPORARY.format(name=r"task-[0-9a-f]{32}\.safetensors"))
MANIFEST_TEMPORARY = re.compile(_TEMPORARY.format(name=re.escape(MANIFEST)))


def write_task_file(pool_dir: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, str]:
    """Store one task's tensors; returns (relative file name, sha256). Existing files are kept."""
    data = save_safetensors({key: value.contiguous() for key, value in tensors.items()})
    digest = hashlib.sha256(data).hexdigest()
    relative = f"{TASKS_DIR}/task-{digest[:32]}.safetensors"
    target = pool_dir / relative
    _own_tasks_dir(pool_dir, create=True)
    if not _same_regular_file(target, digest):
        files.atomic_write_bytes(target, data)
    return relative, digest


def _read_pool_file(path: Path, limit: int, what: str) -> bytes:
    """A pool's file, never through a link (the pool's files are its own), as `PoolFormatError`."""
    return files.read_regular_file(
        path, limit=limit, error=PoolFormatError, what=what, follow_symlinks=False
    )


def _same_regular_file(path: Path, digest: str) -> bool:
    """Whether ``path`` is a regular file (not a link) holding bytes with this sha256."""
    try:
        data = _read_pool_file(path, files.MAX_TASK_FILE_BYTES, "file")
    except PoolFormatError:
        return False
    return hashlib.sha256(data).hexdigest() == digest


def _own_tasks_dir(pool_dir: Path, *, create: bool = False) -> Path | None:
    """The pool's tasks/ folder, refused if it is a link or not a folder; None if absent."""
    tasks = pool_dir / TASKS_DIR
    if create:
        try:
            tasks.mkdir()
        except FileExistsError:
            pass
    try:
        mode = tasks.lstat().st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
        raise PoolFormatError(
            f"{tasks}: is {what}; a pool's {TASKS_DIR}/ must be a real folder inside the pool "
            "(refusing to write, read or delete through it)"
        )
    return tasks


def write_manifest(pool_dir: Path, manifest: dict) -> None:
    """Atomically replace the manifest: the moment a save becomes visible."""
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    files.atomic_write_bytes(pool_dir / MANIFEST, text.encode("utf-8"))


def remove_unreferenced(pool_dir: Path, referenced: set[str]) -> None:
    """Delete task files and temporaries the manifest does not name (left by interrupted saves).

    Only regular files whose names are exactly those the pool writes are deleted: anything
    else in the folder, and any symbolic link, is left alone.
    """
    tasks = _own_tasks_dir(pool_dir)
    if tasks is not None:
        for path in tasks.iterdir():
            if f"{TASKS_DIR}/{path.name}" in referenced:
                continue
            if TASK_FILE.fullmatch(path.name) or TASK_TEMPORARY.fullmatch(path.name):
                _unlink_regular(path)
    for path in pool_dir.iterdir():
        if MANIFEST_TEMPORARY.fullmatch(path.name):
            _unlink_regular(path)


def _unlink_regular(path: Path) -> None:
    try:
        if stat.S_ISREG(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def check_pool_folder(pool_dir: str | os.PathLike) -> Path:
    """``pool_dir`` as a Path, if the pool may write there; `PoolFormatError` if not.

    A pool writes only into a folder that does not exist yet, an empty one, or one that holds
    a pool (a pool's ``manifest.json``, or only files a pool writes: an interrupted first
    save). Its manifest, ``tasks/`` folder and lock must not be symbolic links.
    """
    if os.fspath(pool_dir) == "":
        raise PoolFormatError("the pool path is empty; give the pool's folder")
    pool_dir = Path(pool_dir)
    try:
        mode = pool_dir.stat().st_mode
    except FileNotFoundError:
        return pool_dir
    except OSError as error:
        raise PoolFormatError(
            f"{pool_dir}: cannot use as a pool folder ({error.strerror})"
        ) from None
    if not stat.S_ISDIR(mode):
        raise PoolFormatError(f"{pool_dir}: not a folder; give a new folder or a pool's folder")
    for name, wanted in ((MANIFEST, stat.S_ISREG), (LOCK, stat.S_ISREG)):
        try:
            mode = (pool_dir / name).lstat().st_mode
        except FileNotFoundError:
            continue
        if not wanted(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise PoolFormatError(
                f"{pool_dir / name}: is {what}; a pool writes only its own "
                "regular files (remove it, or use another folder)"
            )
    tasks = _own_tasks_dir(pool_dir)
    if (pool_dir / MANIFEST).exists():
        read_manifest(pool_dir)  # a manifest.json that is not a pool's makes no pool
        return pool_dir
    foreign = [
        path.name
        for path in sorted(pool_dir.iterdir())
        if path.name not in (LOCK, TASKS_DIR) and not MANIFEST_TEMPORARY.fullmatch(path.name)
    ]
    if tasks is not None:
        foreign += [
            f"{TASKS_DIR}/{path.name}"
            for path in sorted(tasks.iterdir())
            if not (TASK_FILE.fullmatch(path.name) or TASK_TEMPORARY.fullmatch(path.name))
        ]
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3])
        shown += ", ..." if len(foreign) > 3 else ""
        raise PoolFormatError(
            f"{pool_dir}: not a pool (no {MANIFEST}) and not empty (holds {shown}); a pool is "
            "written only into a new or empty folder, or into an existing pool"
        )
    return pool_dir


def read_manifest(pool_dir: str | os.PathLike) -> dict:
    """The manifest of a pool directory, checked for format and version."""
    pool_dir = Path(pool_dir)
    path = pool_dir / MANIFEST
    if not pool_dir.exists():
        raise PoolFormatError(f"{pool_dir}: no such pool directory")
    if not path.exists() and not path.is_symlink():
        raise PoolFormatError(
            f"{pool_dir}: not a pool (no {MANIFEST}); give a folder made by PromptPool.save "
            "or 'continual learn'"
        )
    raw = _read_pool_file(path, files.MAX_MANIFEST_BYTES, "manifest")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError and over-long numbers; RecursionError, deep nesting.
        raise PoolFormatError(
            f"{path}: not valid JSON ({error}); the manifest is corrupt"
        ) from None
    PoolConfig.from_manifest(manifest, path)
    return manifest


def task_file_path(pool_dir: Path, relative: object) -> Path:
    """Where a manifest's task file lies, after checking that its name stays inside the pool's
    own tasks/ folder (a hand-edited manifest must not point a read anywhere else)."""
    if (
        not isinstance(relative, str)
        or not relative.startswith(f"{TASKS_DIR}/")
        or ".." in relative
        or "\x00" in relative
    ):
        raise PoolFormatError(
            f"{pool_dir / MANIFEST}: bad task file name {relative!r}; task files lie in the "
            f"pool's {TASKS_DIR}/ folder (the manifest was edited or is not trusted)"
        )
    path = pool_dir / relative
    name = relative[len(TASKS_DIR) + 1 :]
    if not name or "/" in name or name in (".", ".."):
        raise PoolFormatError(
            f"{path}: cannot read the task file (not a file name inside "
            f"the pool's {TASKS_DIR}/ folder)"
        )
    try:
        tasks = _own_tasks_dir(pool_dir)
    except PoolFormatError as error:
        raise PoolFormatError(f"{error}; cannot read the task file {relative!r}") from None
    if tasks is None:
        raise PoolFormatError(f"{path}: task file missing; the pool is incomplete")
    return path


def read_task_file(pool_dir: Path, relative: str, sha256: str) -> dict[str, torch.Tensor]:
    """One task's tensors, after checking the file's sha256 against the manifest."""
    path = task_file_path(pool_dir, relative)
    try:
        data = _read_pool_file(path, files.MAX_TASK_FILE_BYTES, "task file")
    except PoolFormatError as error:
        if "task file not found" in str(error):
            raise PoolFormatError(f"{path}: task file missing; the pool is incomplete") from None
        raise
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise PoolFormatError(
            f"{path}: checksum mismatch (manifest {str(sha256)[:12]}…, file {actual[:12]}…): "
            "the file is corrupt or was replaced; restore it from a backup"
        )
    try:
        # safetensors holds raw tensors only: loading it cannot run code.
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise PoolFormatError(f"{path}: not a valid safetensors file ({error})") from None
    for name, tensor in tensors.items():
        # Another dtype than a pool writes would fail only at prediction.
        if tensor.dtype not in stored_dtypes(name):
            allowed = " or ".join(str(dtype) for dtype in stored_dtypes(name))
            raise PoolFormatError(
                f"{path}: tensor {name!r} is {tensor.dtype}, expected {allowed}; "
                "the file was not written by PromptPool.save"
            )
    return tensors


def stored_dtypes(name: str) -> tuple[torch.dtype, ...]:
    """The dtypes a task file may hold tensor ``name`` in: float32, for selector statistics
    also float16, and for the covariance's directions also int8 (each row scaled to 127)."""
    if name == "selector.basis":
        return (torch.float32, torch.float16, torch.int8)
    if name.startswith("selector."):
        return (torch.float32, torch.float16)
    return (torch.float32,)


def task_record(entry: TaskEntry, file: str, sha256: str) -> dict:
    """The manifest's record of one task saved as ``file`` (a text-to-text task's with its
    ``generation`` settings; a record without them is a label task, as in older pools)."""
    record = {
        "name": entry.name,
        "labels": entry.labels,
        "file": file,
        "sha256": sha256,
        "stats": entry.stats,
    }
    if entry.generation is not None:
        record["generation"] = entry.generation.to_dict()
    return record


def read_generation(raw: object, where: str) -> Generation | None:
    """A record's ``generation`` settings (None: a label task); errors name ``where``."""
    if raw is None:
        return None
    try:
        generation = Generation.from_dict(raw)
    except ContinualError as error:
        raise PoolFormatError(f"{where}: field 'generation': {error}") from None
    if generation.max_new_tokens is None:
        raise PoolFormatError(f"{where}: field 'generation': max_new_tokens is missing")
    return generation


def check_labels(labels: object, generation: Generation | None, where: str) -> list[str]:
    """A record's label names: at least 2 distinct strings for a label task, none for a
    text-to-text task."""
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise PoolFormatError(f"{where}: field 'labels' must be a list of strings")
    if generation is not None and labels:
        raise PoolFormatError(f"{where}: a text-to-text task has no labels, got {labels}")
    if generation is None and len(labels) < 2:
        raise PoolFormatError(f"{where}: field 'labels' must list at least 2 strings")
    if len(set(labels)) != len(labels):
        raise PoolFormatError(f"{where}: field 'labels' has duplicates {labels}")
    return list(labels)


def required_tensors(generation: Generation | None) -> set[str]:
    """The tensors a task file must hold: the prompt, and a label task's head."""
    return {"prompt"} if generation is not None else {"prompt", "head.weight", "head.bias"}


def write_entries(
    pool_dir: Path,
    entries: list[TaskEntry],
    saved: Callable[[TaskEntry], dict | None] | None = None,
) -> list[dict]:
    """Write each entry's task file (existing identical files are kept); their records.

    ``saved`` gives an entry's record when its file is known to be in ``pool_dir`` already (the
    entry was read from there or written there): that entry is not serialised again, only
    checked to have its file in place, so saving a pool of many tasks after adding one writes
    that task's file alone.
    """
    records = []
    for entry in entries:
        record = saved(entry) if saved is not None else None
        if record is None or not _is_regular_file(pool_dir / record["file"]):
            record = task_record(entry, *write_task_file(pool_dir, entry.tensors()))
        records.append(record)
    return records


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def read_entries(
    pool_dir: str | os.PathLike,
    manifest: dict | None = None,
    known: Callable[[dict], TaskEntry | None] | None = None,
) -> list[TaskEntry]:
    """Every task entry of a saved pool, checked against the manifest; no backbone needed.

    ``known`` gives the entry already in memory for a manifest record (the same name, labels,
    stats and file checksum), if any: that record's file is not read again.
    """
    pool_dir = Path(pool_dir)
    manifest = manifest if manifest is not None else read_manifest(pool_dir)
    entries = []
    for number, record in enumerate(manifest["tasks"]):
        entry = known(record) if known is not None and isinstance(record, dict) else None
        entries.append(entry or _entry_from_record(pool_dir, record, number))
    return entries


def check_records(pool_dir: Path, manifest: dict) -> None:
    """Every task record of ``manifest`` well-formed and its file present, without reading the
    files: what a disk verb that rewrites the manifest alone needs (adding one task to a pool of
    1,000 reads none of the others; `PromptPool.load` still checks every checksum)."""
    for number, record in enumerate(manifest["tasks"]):
        _record_fields(pool_dir, record, number)
        path = task_file_path(pool_dir, record["file"])
        if not _is_regular_file(path):
            raise PoolFormatError(
                f"{path}: task file missing or not a regular file; the pool is incomplete"
            )


def _entry_from_record(pool_dir: Path, record: object, number: int) -> TaskEntry:
    generation, labels, stats = _record_fields(pool_dir, record, number)
    assert isinstance(record, dict)  # checked by _record_fields
    tensors = read_task_file(pool_dir, record["file"], record["sha256"])
    missing = required_tensors(generation) - set(tensors)
    if missing:
        raise PoolFormatError(f"{pool_dir / record['file']}: missing tensors {sorted(missing)}")
    return TaskEntry.from_tensors(record["name"], labels, tensors, stats, generation)


def _record_fields(
    pool_dir: Path, record: object, number: int
) -> tuple[Generation | None, list[str], dict]:
    """A manifest task record's generation settings, labels and stats, each checked."""
    where = f"{pool_dir / MANIFEST}, task {number}"
    if not isinstance(record, dict):
        raise PoolFormatError(f"{where}: expected an object")
    for key, kind in (("name", str), ("labels", list), ("file", str), ("sha256", str)):
        if not isinstance(record.get(key), kind):
            raise PoolFormatError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    if not record["name"].strip():
        raise PoolFormatError(f"{where}: field 'name' is empty")
    generation = read_generation(record.get("generation"), where)
    labels = check_labels(record["labels"], generation, where)
    stats = record.get("stats") or {}
    if not isinstance(stats, dict):
        raise PoolFormatError(f"{where}: field 'stats' must be an object")
    return generation, labels, stats


def pool_folder_of(folder: Path) -> Path | None:
    """The pool folder ``folder`` is or lies in (links resolved), or None: a folder holding a
    pool's manifest, or a lock beside a ``tasks/`` folder (a first save, interrupted)."""
    resolved = Path(os.path.realpath(folder))
    for candidate in (resolved, *resolved.parents):
        if (candidate / LOCK).is_file() and (candidate / TASKS_DIR).is_dir():
            return candidate  # a pool's first save, interrupted before its manifest
        manifest = candidate / MANIFEST
        if not manifest.is_file():
            continue
        try:
            data = files.read_regular_file(
                manifest, limit=files.MAX_MANIFEST_BYTES, follow_symlinks=False
            )
            if json.loads(data.decode("utf-8")).get("format") == FORMAT:
                return candidate
        except (ContinualError, ValueError, AttributeError, RecursionError):
            continue
    return None
