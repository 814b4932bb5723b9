"""Task management on a pool directory: remove a task, export one to a file, import one.

These work on the pool's files alone (manifest and task files), with no backbone loaded, under
the same guarantees as ``continual learn``: the pool's lock is held, task files are written
first and checksummed, and the manifest is replaced atomically last, so a crash leaves the
previous pool. An exported task is one safetensors file (tensors plus string metadata: name,
labels, stats, selector config and the backbone fingerprint); importing checks all of it against
the pool before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .entry import TaskEntry
from .errors import ContinualError, PoolFormatError, TaskDataError
from .exported import read_export_file, write_export_file
from .format import PoolConfig, entry_from_export, pool_has, quote_name
from .placement import Placement
from .pool_lock import PoolLock
from .selector import build_selector
from .storage import (
    MANIFEST,
    check_labels,
    check_pool_folder,
    check_records,
    read_generation,
    read_manifest,
    read_task_file,
    remove_unreferenced,
    task_record,
    write_manifest,
    write_task_file,
)


def _record(manifest: dict, pool_dir: Path, name: str) -> dict:
    names = [record.get("name") for record in manifest["tasks"] if isinstance(record, dict)]
    for record in manifest["tasks"]:
        if isinstance(record, dict) and record.get("name") == name:
            return record
    raise TaskDataError(f"{pool_dir}: no task {quote_name(name)}; {pool_has(names)}")


def remove_task(pool_dir: str | os.PathLike, name: str, *, wait: float = 0.0) -> dict:
    """Remove task ``name`` from the pool on disk; returns its manifest record.

    Its file is deleted unless another task shares it (files are named by content).
    """
    pool_dir = check_pool_folder(pool_dir)
    read_manifest(pool_dir)  # a clear error for a missing pool before creating a lock file
    with PoolLock(pool_dir, timeout=wait):
        manifest = read_manifest(pool_dir)
        record = _record(manifest, pool_dir, name)
        check_records(pool_dir, manifest)  # the manifest is rewritten: its records must hold
        manifest["tasks"] = [r for r in manifest["tasks"] if r is not record]
        write_manifest(pool_dir, manifest)
        remove_unreferenced(pool_dir, {r["file"] for r in manifest["tasks"]})
    return record


def export_task(
    pool_dir: str | os.PathLike, name: str, out: str | os.PathLike, *, force: bool = False
) -> Path:
    """Write task ``name`` of the pool on disk as one self-describing safetensors file.

    ``out`` must be a new file outside any pool folder, in a folder that exists; ``force``
    replaces an existing regular file atomically (see `files.write_new_file`).
    """
    pool_dir = Path(pool_dir)
    manifest = read_manifest(pool_dir)
    record = _record(manifest, pool_dir, name)
    tensors = read_task_file(pool_dir, record["file"], record["sha256"])
    where = f"{pool_dir / MANIFEST}: task {name!r}"
    generation = read_generation(record.get("generation"), where)
    return write_export_file(
        out,
        tensors,
        name=name,
        labels=check_labels(record.get("labels"), generation, where),
        stats=dict(record.get("stats") or {}),
        selector=manifest["selector"],
        backbone=manifest["backbone"],
        generation=generation,
        force=force,
    )


def import_task(
    pool_dir: str | os.PathLike,
    file: str | os.PathLike,
    *,
    name: str | None = None,
    wait: float = 0.0,
) -> TaskEntry:
    """Add an exported task to the pool on disk (created from the file's settings if missing).

    Refuses, before writing anything, a task from another backbone, for another selector or
    with a state that does not fit, a prompt of another length, or a name clash.
    """
    from .learner import TrainingConfig

    pool_dir, file = check_pool_folder(pool_dir), Path(file)
    tensors, info = read_export_file(file)
    with PoolLock(pool_dir, timeout=wait):
        records: list[Any] = []
        if (pool_dir / MANIFEST).exists():
            manifest = read_manifest(pool_dir)
            check_records(pool_dir, manifest)  # the manifest is rewritten: its records must hold
            config = PoolConfig.from_manifest(manifest, pool_dir / MANIFEST)
            records = manifest["tasks"]
        else:
            config = PoolConfig(
                backbone=info["backbone"],
                hidden_size=info["backbone"]["hidden_size"],
                prompt_length=int(tensors["prompt"].shape[-2]),
                placement=Placement.of_prompt(tensors["prompt"]).name,
                selector=info["selector_config"],
                training=TrainingConfig().to_dict(),
            )
        try:
            selector = build_selector(config.selector)
        except ContinualError as error:
            where = pool_dir / MANIFEST if records else file
            raise PoolFormatError(f"{where}: bad selector config ({error})") from None
        entry = entry_from_export(
            file,
            tensors,
            info,
            name=name,
            backbone=config.backbone,
            prompt_shape=config.prompt_shape(),
            selector=selector,
            tasks=[record.get("name") for record in records],
        )
        records.append(task_record(entry, *write_task_file(pool_dir, entry.tensors())))
        write_manifest(pool_dir, config.to_manifest(records))
        remove_unreferenced(pool_dir, {r["file"] for r in records})
    return entry
