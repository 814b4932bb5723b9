"""The pool's verbs on a folder: learn a task into it, describe it, remove a task, export one
to a file, import one; and score a pool on a data file.

`learn_into_folder` loads (or creates) the pool with its backbone; the others work on the pool's
files alone (manifest and task files), with no backbone loaded. All that change a pool hold its
lock, write task files first, checksummed, and replace the manifest atomically last, so a crash
leaves the previous pool. An exported task is one safetensors file (tensors plus string
metadata: name, labels, stats, selector config and the backbone fingerprint); importing checks
all of it against the pool before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import distributed
from .backbone import Backbone
from .data import Task, read_examples
from .entry import TaskEntry
from .errors import ContinualError, PoolFormatError, TaskDataError
from .exported import read_export_file, write_export_file
from .format import PoolConfig, entry_from_export, pool_has, quote_name
from .learner import TrainingConfig
from .metrics import Score
from .placement import Placement
from .pool import PromptPool
from .pool_lock import PoolLock
from .pooling import Pooling
from .selector import build_selector
from .storage import (
    MANIFEST,
    check_labels,
    check_pool_folder,
    check_records,
    read_entries,
    read_generation,
    read_manifest,
    read_task_file,
    remove_unreferenced,
    task_record,
    write_manifest,
    write_task_file,
)


@dataclass(frozen=True)
class NewPoolSettings:
    """How `learn_into_folder` builds a pool where the folder holds none yet.

    Attributes:
        prompt_length: soft prompt vectors per task.
        placement: ``"input"`` or ``"query_layer"`` (see `continual.placement`).
        selector: the selector's name (None: the default selector).
        head: ``"linear"`` or ``"verbalizer"`` (see `TrainingConfig`).
        max_length: tokens per input, prompt not counted.
        pooling: ``"mean"`` or ``"last"``; None takes the last token for a verbalizer head and
            the backbone's default otherwise.
    """

    prompt_length: int = 16
    placement: str = "input"
    selector: str | None = None
    head: Literal["linear", "verbalizer"] = "linear"
    max_length: int = 128
    pooling: Pooling | None = None


@dataclass(frozen=True)
class Learned:
    """What `learn_into_folder` did in this process.

    Attributes:
        entry: the task's new entry; None where ``resume`` found the task in the pool already.
        score: the pool's score on the task's test split, measured by the process that saved
            the pool (None in the other processes and where the task has no test split).
        rank: this process's rank among the processes a launcher started (0 without one).
        world_size: how many processes trained the task (1 without a launcher).
    """

    entry: TaskEntry | None
    score: Score | None = None
    rank: int = 0
    world_size: int = 1


def learn_into_folder(
    pool_dir: str | os.PathLike,
    task: Task,
    *,
    backbone: str | os.PathLike | None = None,
    new_pool: NewPoolSettings | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    resume: bool = False,
    wait: float = 0.0,
    progress: bool = True,
) -> Learned:
    """Learn ``task`` into the pool saved in ``pool_dir``, making the pool if there is none.

    An existing pool is loaded on ``backbone`` (see `PromptPool.load`); a new one is built from
    ``new_pool`` on ``backbone`` (default: the packaged MiniLM), in ``dtype`` (default float32).
    The pool's lock is held from reading the pool to saving it, so no other process changes the
    pool in between. Under torchrun or ``accelerate launch`` every process calls this: they
    join one process group, train the task data-parallel, and rank 0 alone takes the lock and
    writes (see `continual.distributed`).

    Args:
        pool_dir: the pool's folder: new, empty, or holding a pool.
        task: the task to learn.
        backbone: a model name, folder or .gguf file; for an existing pool, checked against
            the one it was built on.
        new_pool: the settings of a pool made here (default: `NewPoolSettings`'s).
        device: where the backbone runs (``cpu``, ``cuda``, ``cuda:1``, ``auto``).
        dtype: the backbone's precision (default: the pool's own, float32 for a new pool).
        epochs: training epochs at most for this task (default: the pool's).
        seed: seeds the training and the selector's state.
        resume: return without error (and with no entry) when the pool holds the task already.
        wait: seconds to wait for another process that holds the pool's lock.
        progress: show training progress.

    Returns:
        The new entry and its score on the task's test split (see `Learned`).

    Raises:
        ContinualError: the task's name is taken (without ``resume``), the folder or the pool
            in it is unusable, or ``backbone`` is not the pool's.
        PoolLockedError: another process holds the pool's lock longer than ``wait`` seconds.
    """
    pool_dir = check_pool_folder(pool_dir)
    with distributed.process_group(device) as device:
        main = distributed.is_main()
        # Rank 0 alone takes the lock and writes; the other ranks only read an existing pool
        # (its settings and backbone), after the barrier, so while rank 0 holds the lock.
        with PoolLock(pool_dir, timeout=wait) if main else contextlib.nullcontext():
            distributed.barrier()
            if (pool_dir / MANIFEST).exists():
                pool = PromptPool.load(pool_dir, backbone, device=device, dtype=dtype)
                if task.name in pool.tasks:
                    if resume:
                        return Learned(None, None, distributed.rank(), distributed.world_size())
                    raise ContinualError(
                        f"task {task.name!r} is already in {pool_dir}; choose another --task name"
                    )
            else:
                pool = _new_pool(new_pool or NewPoolSettings(), backbone, device, dtype)
            training = None
            if epochs is not None:
                training = dataclasses.replace(pool.training, epochs=epochs)
            entry = pool.learn(task, seed=seed, progress=progress, training=training)
            if main:
                pool.save(pool_dir, lock=False)  # this process holds the lock already
            distributed.barrier()
            score = pool.evaluate(task) if main and task.test else None
            return Learned(entry, score, distributed.rank(), distributed.world_size())


def _new_pool(
    settings: NewPoolSettings, backbone: str | os.PathLike | None, device: str, dtype: str | None
) -> PromptPool:
    verbalizer = settings.head == "verbalizer"
    return PromptPool(
        Backbone.load(
            backbone,
            max_length=settings.max_length,
            device=device,
            dtype=dtype or "float32",
            pooling=settings.pooling or ("last" if verbalizer else None),
        ),
        prompt_length=settings.prompt_length,
        placement=settings.placement,
        selector=settings.selector,
        training=TrainingConfig(head=settings.head),
    )


@dataclass(frozen=True)
class TaskInfo:
    """One task of a saved pool, as `pool_info` reports it.

    Attributes:
        name: the task's name.
        labels: its labels (empty for a text-to-text task).
        generation: a text-to-text task's settings as the manifest records them (None: a
            label task).
        bytes: the size of its file (None where it is not a regular file).
        stats: the training statistics the manifest records.
    """

    name: str
    labels: list[str]
    generation: dict[str, Any] | None
    bytes: int | None
    stats: dict[str, Any]


@dataclass(frozen=True)
class PoolInfo:
    """What a saved pool holds, as `pool_info` reports it.

    Attributes:
        pool: the pool's folder.
        backbone: the name of the model it was built on.
        hidden_size: the backbone's width.
        prompt_length: soft prompt vectors per task.
        placement: ``"input"`` or ``"query_layer"``.
        selector: the selector's config.
        tasks: its tasks, in the order they were learned.
    """

    pool: Path
    backbone: str | None
    hidden_size: int
    prompt_length: int
    placement: str
    selector: dict[str, Any]
    tasks: list[TaskInfo]

    def to_dict(self) -> dict[str, Any]:
        """As JSON writes it (the folder as a string)."""
        return dataclasses.asdict(self) | {"pool": str(self.pool)}


def pool_info(pool_dir: str | os.PathLike) -> PoolInfo:
    """The settings and tasks of the pool saved in ``pool_dir``, with no backbone loaded.

    Every task file is read and checked against the manifest's checksum first, so a damaged
    pool raises `PoolFormatError` rather than being described.
    """
    pool_dir = Path(pool_dir)
    manifest = read_manifest(pool_dir)
    read_entries(pool_dir, manifest)
    config = PoolConfig.from_manifest(manifest, pool_dir / MANIFEST)
    tasks = []
    for record in manifest["tasks"]:
        path = pool_dir / record["file"]
        regular = path.is_file() and not path.is_symlink()
        tasks.append(
            TaskInfo(
                name=record["name"],
                labels=record["labels"],
                generation=record.get("generation"),
                bytes=path.lstat().st_size if regular else None,
                stats=record.get("stats", {}),
            )
        )
    return PoolInfo(
        pool=pool_dir,
        backbone=config.backbone.get("name"),
        hidden_size=config.hidden_size,
        prompt_length=config.prompt_length,
        placement=config.placement,
        selector=config.selector,
        tasks=tasks,
    )


def evaluate_file(
    pool: PromptPool, task: str, path: str | os.PathLike, *, oracle: bool = False
) -> Score:
    """``pool``'s score on task ``task`` over the examples of a CSV/JSONL file, read as that
    task's kind (its ``label`` or its ``target`` column); see `PromptPool.evaluate`."""
    kinds = {entry.name: entry.kind for entry in pool.entries}
    if task not in kinds:
        raise TaskDataError(f"task {quote_name(task)} is not in the pool; {pool_has(pool.tasks)}")
    return pool.evaluate(task, read_examples(Path(path), kinds[task])[1], oracle=oracle)


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
