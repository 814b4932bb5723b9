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

import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import IO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .entry import TaskEntry
from .errors import PoolFormatError, PoolLockedError

FORMAT = "continual-pool"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TASKS_DIR = "tasks"
LOCK = ".lock"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes owner-only files; give the file the usual permissions instead.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_task_file(pool_dir: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, str]:
    """Store one task's tensors; returns (relative file name, sha256). Existing files are kept."""
    data = save_safetensors({key: value.contiguous() for key, value in tensors.items()})
    digest = hashlib.sha256(data).hexdigest()
    relative = f"{TASKS_DIR}/task-{digest[:32]}.safetensors"
    target = pool_dir / relative
    if not (target.exists() and _sha256(target) == digest):
        atomic_write_bytes(target, data)
    return relative, digest


def write_manifest(pool_dir: Path, manifest: dict) -> None:
    """Atomically replace the manifest: the moment a save becomes visible."""
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(pool_dir / MANIFEST, text.encode("utf-8"))


def remove_unreferenced(pool_dir: Path, referenced: set[str]) -> None:
    """Delete task files and temporaries the manifest does not name (left by interrupted saves)."""
    tasks = pool_dir / TASKS_DIR
    if not tasks.is_dir():
        return
    for path in tasks.iterdir():
        if f"{TASKS_DIR}/{path.name}" not in referenced and (
            path.name.startswith("task-") or path.name.endswith(".tmp")
        ):
            path.unlink(missing_ok=True)
    for path in pool_dir.glob(f".{MANIFEST}.*.tmp"):
        path.unlink(missing_ok=True)


def read_manifest(pool_dir: str | os.PathLike) -> dict:
    """The manifest of a pool directory, checked for format and version."""
    pool_dir = Path(pool_dir)
    path = pool_dir / MANIFEST
    if not pool_dir.exists():
        raise PoolFormatError(f"{pool_dir}: no such pool directory")
    if not path.is_file():
        raise PoolFormatError(
            f"{pool_dir}: not a pool (no {MANIFEST}); give a folder made by PromptPool.save "
            "or 'continual learn'"
        )
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise PoolFormatError(f"{path}: cannot read the manifest ({error.strerror})") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError and over-long numbers; RecursionError, deep nesting.
        raise PoolFormatError(f"{path}: not valid JSON ({error}); the manifest is corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PoolFormatError(f"{path}: not a continual pool manifest (field 'format')")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise PoolFormatError(
            f"{path}: format_version {version!r} is not supported (this version reads "
            f"{FORMAT_VERSION}); use the continual release that wrote it"
        )
    for field, kind in (("backbone", dict), ("tasks", list), ("prompt_length", int),
                        ("hidden_size", int), ("selector", dict)):
        if not isinstance(manifest.get(field), kind):
            raise PoolFormatError(f"{path}: field {field!r} is missing or not a {kind.__name__}")
    return manifest


def read_task_file(pool_dir: Path, relative: str, sha256: str) -> dict[str, torch.Tensor]:
    """One task's tensors, after checking the file's sha256 against the manifest."""
    if (not isinstance(relative, str) or not relative.startswith(f"{TASKS_DIR}/")
            or ".." in relative or "\x00" in relative):
        raise PoolFormatError(
            f"{pool_dir / MANIFEST}: bad task file name {relative!r}; task files lie in the "
            f"pool's {TASKS_DIR}/ folder (the manifest was edited or is not trusted)"
        )
    path = pool_dir / relative
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PoolFormatError(f"{path}: task file missing; the pool is incomplete") from None
    except OSError as error:
        raise PoolFormatError(f"{path}: cannot read the task file ({error.strerror})") from None
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
        # Every tensor a pool writes is float32; another dtype would fail only at prediction.
        if tensor.dtype != torch.float32:
            raise PoolFormatError(
                f"{path}: tensor {name!r} is {tensor.dtype}, expected torch.float32; "
                "the file was not written by PromptPool.save"
            )
    return tensors


def task_record(entry: TaskEntry, file: str, sha256: str) -> dict:
    """The manifest's record of one task saved as ``file``."""
    return {"name": entry.name, "labels": entry.labels, "file": file, "sha256": sha256,
            "stats": entry.stats}


def write_entries(pool_dir: Path, entries: list[TaskEntry]) -> list[dict]:
    """Write each entry's task file (existing identical files are kept); their records."""
    return [task_record(entry, *write_task_file(pool_dir, entry.tensors())) for entry in entries]


def read_entries(pool_dir: str | os.PathLike, manifest: dict | None = None) -> list[TaskEntry]:
    """Every task entry of a saved pool, checked against the manifest; no backbone needed."""
    pool_dir = Path(pool_dir)
    manifest = manifest if manifest is not None else read_manifest(pool_dir)
    return [_entry_from_record(pool_dir, record, number)
            for number, record in enumerate(manifest["tasks"])]


def _entry_from_record(pool_dir: Path, record: object, number: int) -> TaskEntry:
    where = f"{pool_dir / MANIFEST}, task {number}"
    if not isinstance(record, dict):
        raise PoolFormatError(f"{where}: expected an object")
    for key, kind in (("name", str), ("labels", list), ("file", str), ("sha256", str)):
        if not isinstance(record.get(key), kind):
            raise PoolFormatError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    if not record["name"].strip():
        raise PoolFormatError(f"{where}: field 'name' is empty")
    labels = record["labels"]
    if len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise PoolFormatError(f"{where}: field 'labels' must list at least 2 strings")
    stats = record.get("stats") or {}
    if not isinstance(stats, dict):
        raise PoolFormatError(f"{where}: field 'stats' must be an object")
    tensors = read_task_file(pool_dir, record["file"], record["sha256"])
    missing = {"prompt", "head.weight", "head.bias"} - set(tensors)
    if missing:
        raise PoolFormatError(f"{pool_dir / record['file']}: missing tensors {sorted(missing)}")
    return TaskEntry.from_tensors(record["name"], labels, tensors, stats)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class PoolLock:
    """An exclusive lock on a pool directory, so two processes never change one pool at once.

    Args:
        pool_dir: the pool's folder (created if missing).
        timeout: seconds to wait for another holder; 0 fails at once.
    """

    def __init__(self, pool_dir: str | os.PathLike, timeout: float = 0.0) -> None:
        self.path = Path(pool_dir) / LOCK
        self.timeout = timeout
        self._file: IO[str] | None = None

    def __enter__(self) -> PoolLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self._file = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    handle.close()
                    self._file = None
                    raise PoolLockedError(
                        f"{self.path.parent}: another process is changing this pool; "
                        "wait for it to finish (or pass a longer --wait)"
                    ) from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


# -- one task as one self-describing file (continual export / import) ----------------------------
TASK_FORMAT = "continual-task"
TASK_FORMAT_VERSION = "1"
_BACKBONE_KEYS = ("name", "model_type", "hidden_size", "num_layers", "vocab_size",
                  "weights_sha256", "max_length", "query_layer")


def write_export_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], *, name: str,
                      labels: list[str], stats: dict, selector: dict, backbone: dict) -> Path:
    """Write one task as a single safetensors file whose string metadata describes it.

    The tensors are the task's prompt, head and ``selector.*`` state; the metadata holds its
    name, labels, stats, the selector's config and the backbone fingerprint, so the file can be
    checked against any pool before it joins it. Written atomically.
    """
    path = Path(path)
    metadata = {
        "format": TASK_FORMAT,
        "format_version": TASK_FORMAT_VERSION,
        "name": name,
        "labels": json.dumps(list(labels)),
        "stats": json.dumps(stats),
        "selector": str(selector.get("name")),
        "selector_config": json.dumps(selector),
        "backbone": json.dumps(backbone),
    }
    data = save_safetensors({key: value.contiguous() for key, value in tensors.items()},
                            metadata=metadata)
    atomic_write_bytes(path, data)
    return path


def read_export_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and checked metadata of a file written by `write_export_file`.

    Returns ``(tensors, info)`` where ``info`` has ``name`` (str), ``labels`` (list of str),
    ``stats`` (dict), ``selector`` (str), ``selector_config`` (dict) and ``backbone`` (dict).
    Every field and tensor is validated; errors name the file. Nothing is unpickled.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PoolFormatError(f"{path}: no such task file") from None
    except OSError as error:
        raise PoolFormatError(f"{path}: cannot read the task file ({error.strerror})") from None
    metadata = _safetensors_metadata(path, data)
    if metadata.get("format") != TASK_FORMAT:
        raise PoolFormatError(f"{path}: not an exported continual task (metadata 'format' is "
                              f"{metadata.get('format')!r}); make one with 'continual export'")
    if metadata.get("format_version") != TASK_FORMAT_VERSION:
        raise PoolFormatError(f"{path}: task format_version {metadata.get('format_version')!r} "
                              f"is not supported (this version reads {TASK_FORMAT_VERSION})")
    info: dict = {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise PoolFormatError(f"{path}: metadata 'name' is missing, empty or padded with spaces")
    info["name"] = name
    for field, kind in (("labels", list), ("stats", dict), ("selector_config", dict),
                        ("backbone", dict)):
        raw = metadata.get(field)
        if not isinstance(raw, str):
            raise PoolFormatError(f"{path}: metadata {field!r} is missing")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise PoolFormatError(f"{path}: metadata {field!r} is not valid JSON") from None
        if not isinstance(value, kind):
            raise PoolFormatError(f"{path}: metadata {field!r} is not a JSON {kind.__name__}")
        info[field] = value
    labels = info["labels"]
    if len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise PoolFormatError(f"{path}: metadata 'labels' must list at least 2 strings")
    if len(set(labels)) != len(labels):
        raise PoolFormatError(f"{path}: metadata 'labels' has duplicates {labels}")
    selector = metadata.get("selector")
    if not isinstance(selector, str) or selector != info["selector_config"].get("name"):
        raise PoolFormatError(f"{path}: metadata 'selector' {selector!r} does not match "
                              f"'selector_config' {info['selector_config'].get('name')!r}")
    info["selector"] = selector
    backbone = info["backbone"]
    for key in _BACKBONE_KEYS:
        if key not in backbone:
            raise PoolFormatError(f"{path}: metadata 'backbone' lacks {key!r}")
    hidden = backbone["hidden_size"]
    if type(hidden) is not int or hidden < 1:
        raise PoolFormatError(f"{path}: metadata 'backbone' has a bad hidden_size {hidden!r}")
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise PoolFormatError(f"{path}: not a valid safetensors file ({error})") from None
    missing = {"prompt", "head.weight", "head.bias"} - set(tensors)
    if missing:
        raise PoolFormatError(f"{path}: missing tensors {sorted(missing)}")
    for key, tensor in tensors.items():
        if key not in ("prompt", "head.weight", "head.bias") and not key.startswith("selector."):
            raise PoolFormatError(f"{path}: unexpected tensor {key!r}")
        if tensor.dtype != torch.float32:
            raise PoolFormatError(f"{path}: tensor {key!r} is {tensor.dtype}, expected "
                                  "torch.float32")
    prompt, weight, bias = tensors["prompt"], tensors["head.weight"], tensors["head.bias"]
    if prompt.dim() != 2 or prompt.shape[0] < 1 or prompt.shape[1] != hidden:
        raise PoolFormatError(f"{path}: prompt shape {tuple(prompt.shape)} is not "
                              f"(length, {hidden})")
    if tuple(weight.shape) != (len(labels), hidden) or tuple(bias.shape) != (len(labels),):
        raise PoolFormatError(f"{path}: head shapes {tuple(weight.shape)}, {tuple(bias.shape)} "
                              f"do not fit {len(labels)} labels of width {hidden}")
    return tensors, info


def _safetensors_metadata(path: Path, data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (8-byte length, then JSON)."""
    if len(data) < 8:
        raise PoolFormatError(f"{path}: not a valid safetensors file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise PoolFormatError(f"{path}: not a valid safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PoolFormatError(f"{path}: not a valid safetensors file (bad header)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise PoolFormatError(f"{path}: not an exported continual task (no string metadata); "
                              "make one with 'continual export'")
    return metadata
