"""The pool in its folder: which entries' files are already there (so that `PromptPool.save`
and `PromptPool.reload` skip them), saving, and opening a saved pool on a checked backbone."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .backbone import Backbone
from .entry import TaskEntry
from .errors import ContinualError, PoolFormatError
from .exported import read_export_file, write_export_file
from .format import (
    PoolConfig,
    entry_from_export,
    fingerprint_mismatch,
    is_setting,
    load_backbone,
)
from .learner import TrainingConfig
from .pool_lock import PoolLock
from .selector import Selector, build_selector
from .storage import (
    MANIFEST,
    check_pool_folder,
    read_entries,
    read_manifest,
    remove_unreferenced,
    write_entries,
    write_manifest,
)


class PoolFiles:
    """Where each of a pool's entries lies, as (folder, manifest record), once read from or
    written to a folder, and that folder's settings then."""

    def __init__(self) -> None:
        self._saved: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._source: tuple[str, dict[str, Any]] | None = None

    def record_in(self, folder: str, entry: TaskEntry) -> dict[str, Any] | None:
        """The manifest record of ``entry``'s file in ``folder``, if it was read or written there."""
        saved = self._saved.get(entry)
        return saved[1] if saved is not None and saved[0] == folder else None

    def remember(self, pool_dir: Path, manifest: dict[str, Any], entries: list[TaskEntry]) -> None:
        folder = folder_key(pool_dir)
        for entry, record in zip(entries, manifest["tasks"], strict=True):
            self._saved[entry] = (folder, record)
        self._source = (folder, PoolConfig.from_manifest(manifest, pool_dir).settings())

    def save(
        self,
        path: str | os.PathLike,
        config: PoolConfig,
        entries: list[TaskEntry],
        *,
        lock: bool,
        wait: float,
    ) -> Path:
        """Write the entries' files not yet there, then the manifest (see `PromptPool.save`)."""
        pool_dir = check_pool_folder(path)  # never a folder that holds what the pool did not make
        pool_dir.mkdir(parents=True, exist_ok=True)
        with PoolLock(pool_dir, timeout=wait) if lock else contextlib.nullcontext():
            check_pool_folder(pool_dir)  # again, now that no other writer can change it
            folder = folder_key(pool_dir)
            records = write_entries(pool_dir, entries, lambda e: self.record_in(folder, e))
            manifest = config.to_manifest(records)
            write_manifest(pool_dir, manifest)
            remove_unreferenced(pool_dir, {record["file"] for record in records})
            self.remember(pool_dir, manifest, entries)
        return pool_dir

    def known(
        self, pool_dir: Path, manifest: dict[str, Any], entries: Sequence[TaskEntry]
    ) -> dict[str, TaskEntry] | None:
        """The entries still named by ``manifest`` of the folder they were read from or saved
        to, by `record_key`; None where the folder or its settings changed since."""
        folder = folder_key(pool_dir)
        if self._source != (folder, PoolConfig.from_manifest(manifest, pool_dir).settings()):
            return None
        known = {}
        for entry in entries:
            record = self.record_in(folder, entry)
            if record is not None:
                known[record_key(record)] = entry
        return known


def open_pool(
    pool_dir: Path,
    backbone: Backbone | str | os.PathLike | None,
    device: str | torch.device,
    dtype: str | None,
) -> tuple[Backbone, dict[str, Any], Selector, TrainingConfig]:
    """A saved pool's backbone (loaded, or checked against its fingerprint), manifest, selector
    and training settings; see `PromptPool.load`."""
    manifest = read_manifest(pool_dir)
    where = pool_dir / MANIFEST
    saved = PoolConfig.from_manifest(manifest, where).backbone
    if backbone is None or not isinstance(backbone, Backbone):
        backbone = load_backbone(saved, where, backbone, device, dtype)
    current = backbone.fingerprint()
    key = fingerprint_mismatch(saved, current)
    if key is not None and is_setting(key):
        raise PoolFormatError(
            f"{where}: the pool was built with {key}={saved.get(key)!r}, the backbone "
            f"has {current.get(key)!r}; load it with Backbone.load(..., {key}="
            f"{saved.get(key)!r})"
        )
    if key is not None:
        raise PoolFormatError(
            f"{where}: the pool was built on backbone {saved.get('name')!r} and this is "
            f"{current.get('name')!r} ({key} differs: {saved.get(key)!r} vs "
            f"{current.get(key)!r}); load the backbone the pool was built on"
        )
    if manifest["hidden_size"] != backbone.hidden_size:
        raise PoolFormatError(
            f"{where}: hidden_size {manifest['hidden_size']} does not match "
            f"the backbone's {backbone.hidden_size}"
        )
    try:
        training = TrainingConfig(**manifest.get("training", {}))
    except (TypeError, ContinualError) as error:
        raise PoolFormatError(f"{where}: bad field 'training' ({error})") from None
    try:
        selector = build_selector(manifest["selector"])
    except Exception as error:
        raise PoolFormatError(f"{where}: bad field 'selector' ({error})") from None
    return backbone, manifest, selector, training


def saved_entries(
    pool_dir: Path, manifest: dict[str, Any], known: dict[str, TaskEntry] | None
) -> list[TaskEntry]:
    """The manifest's entries: those in ``known`` (by `record_key`) reused, the others read."""
    return read_entries(
        pool_dir, manifest, None if known is None else lambda r: known.get(record_key(r))
    )


@contextlib.contextmanager
def naming_the_manifest(pool_dir: Path) -> Iterator[None]:
    """Errors inside become `PoolFormatError`s that name the pool's manifest or file."""
    try:
        yield
    except ContinualError as error:
        message = str(error)
        prefix = "" if message.startswith(str(pool_dir)) else f"{pool_dir / MANIFEST}: "
        raise PoolFormatError(f"{prefix}{message}") from None


def folder_key(pool_dir: Path) -> str:
    """One name per pool folder, however the path to it is written."""
    return str(Path(pool_dir).resolve())


def record_key(record: dict[str, Any]) -> str:
    """A task's manifest record as one string: entries with equal records are equal."""
    return json.dumps(record, sort_keys=True)


def export_entry(
    entry: TaskEntry,
    path: str | os.PathLike,
    selector_config: dict[str, Any],
    fingerprint: dict[str, Any],
    *,
    force: bool,
) -> Path:
    """``entry`` as one self-describing safetensors file (see `PromptPool.export_task`)."""
    return write_export_file(
        path,
        entry.tensors(),
        name=entry.name,
        labels=entry.labels,
        stats=entry.stats,
        selector=selector_config,
        backbone=fingerprint,
        generation=entry.generation,
        force=force,
    )


def read_exported(
    path: str | os.PathLike,
    name: str | None,
    fingerprint: dict[str, Any],
    prompt_shape: tuple[int, ...],
    selector: Selector,
    tasks: list[str],
) -> TaskEntry:
    """The entry an exported task file makes in a pool (see `PromptPool.import_task`)."""
    tensors, info = read_export_file(path)
    return entry_from_export(
        Path(path),
        tensors,
        info,
        name=name,
        backbone=fingerprint,
        prompt_shape=prompt_shape,
        selector=selector,
        tasks=tasks,
    )
