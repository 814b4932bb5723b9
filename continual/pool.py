"""The prompt pool: one frozen backbone, a growing list of per-task entries, and a selector.

Each learned task adds an entry (soft prompt, selector state, and a linear head with label names
or, for a text-to-text task, generation settings). Entries are never modified after they are
added, so a later task cannot make the pool forget an earlier one; the only way to get an old
task wrong is to route its input to another task's prompt.

Prediction is batched across tasks: every row gathers its routed task's prompt and head, and one
forward pass of the backbone serves the whole mixed batch; rows routed to text-to-text tasks
are answered by one batched generation (`continual.generate`), each row under its own prompt.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .backbone import Backbone
from .data import Example, Task
from .entry import State, TaskEntry
from .errors import PoolFormatError, TaskDataError
from .format import (
    PoolConfig,
    check_entry,
    check_prompt_length,
    check_task_name,
    pool_has,
    quote_name,
)
from .generate import Sampling
from .learner import TrainingConfig, train_task
from .metrics import Score
from .placement import Placement
from .pool_files import (
    PoolFiles,
    export_entry,
    naming_the_manifest,
    open_pool,
    read_exported,
    saved_entries,
)
from .routing import (
    Prediction,
    Routing,
    calibration_problem,
    calibration_record,
    forced_tasks,
    refusal_thresholds,
    score_predictions,
)
from .selector import UNKNOWN_TASK, Selector, build_selector, default_selector
from .stacked import StackedEntries
from .storage import (
    read_manifest,
)


class PromptPool:
    """A growing pool of per-task soft prompts over one frozen backbone.

    Args:
        backbone: the frozen encoder every task shares.
        prompt_length: soft prompt vectors per task.
        placement: ``"input"`` (each prompt before the input embeddings; routing is a separate
            pass) or ``"query_layer"`` (a deep prompt from the query layer on; one pass routes
            on the query layer and finishes with each row's prompt). See `continual.placement`.
        selector: by default ``"gaussian_views"`` (fitted on each text and its first sentence;
            on the query and last layers for ``input`` placement, the query layer alone for
            ``query_layer``: see `ViewGaussianSelector`), or ``"gaussian"``,
            ``"prototypes"``, ``"keys"``, ``"oracle"``, or a `Selector`.
        training: how each task is trained (`TrainingConfig`).

    Examples:
        >>> pool = PromptPool(Backbone.load(), prompt_length=16)
        >>> tickets = Task.from_files("tickets", "examples/data/tickets.csv")
        >>> entry = pool.learn(tickets, progress=False)
        >>> pool.predict(["My invoice is wrong"])[0].label
        'billing'
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        prompt_length: int = 16,
        placement: str | Placement = "input",
        selector: str | dict[str, Any] | Selector | None = None,
        training: TrainingConfig | None = None,
    ) -> None:
        self.backbone = backbone
        self.prompt_length = prompt_length
        self.placement = Placement.of(placement)
        self.selector = build_selector(
            default_selector(self.placement.deep) if selector is None else selector
        )
        self.placement.check_backbone(backbone)
        self.placement.check_selector(self.selector)
        self.training = training or TrainingConfig()
        self.entries: list[TaskEntry] = []
        self._files = PoolFiles()  # which entries' files are in which folder already
        check_prompt_length(prompt_length, backbone)

    # -- growing ------------------------------------------------------------------------------
    @property
    def prompt_shape(self) -> tuple[int, ...]:
        """One task's prompt: (L, H) at the input, (D, L, H) from the query layer."""
        backbone = self.backbone
        return self.placement.prompt_shape(
            self.prompt_length,
            hidden=backbone.hidden_size,
            num_layers=backbone.num_layers,
            query_layer=backbone.query_layer,
        )

    @property
    def tasks(self) -> list[str]:
        """Names of the learned tasks, in the order they were learned."""
        return [entry.name for entry in self.entries]

    def learn(
        self,
        task: Task,
        *,
        seed: int = 0,
        progress: bool = True,
        training: TrainingConfig | None = None,
    ) -> TaskEntry:
        """Train a new prompt, head and selector state for ``task`` and add them to the pool.

        Earlier entries are not touched. ``training`` overrides the pool's `TrainingConfig`
        for this task only. Raises `TaskDataError` for a name already in the pool.

        Under torchrun or ``accelerate launch`` every process calls this: the prompt and head
        train data-parallel (`continual.distributed`) and every process ends with the same
        entry, selector state included (each fits it on the same texts). Only one process
        should then write: ``if continual.distributed.is_main(): pool.save(path)``.
        """
        check_task_name(task.name)
        if task.name in self.tasks:
            raise TaskDataError(
                f"task {quote_name(task.name)} is already in the pool; choose another name"
            )
        trained = train_task(
            self.backbone,
            task,
            self.prompt_length,
            training or self.training,
            seed=seed,
            progress=progress,
            placement=self.placement,
        )
        return self.add_trained(task, trained, seed=seed)

    def add_trained(self, task: Task, trained: TaskEntry, *, seed: int = 0) -> TaskEntry:
        """Add an entry whose prompt and head are trained, fitting its selector state on ``task``.

        `learn` is `train_task` followed by this; benchmarks reuse one trained prompt under
        several selectors and task orders (training a task never depends on the others).
        """
        # The selector may fit on more than the texts as given (e.g. each one's first sentence)
        # and on wider features (query layer + last layer): see `Selector.training_texts`.
        texts = self.selector.training_texts([text for text, _ in task.train])
        state = self.selector.fit_task(self._queries(texts), self._states(), seed=seed)
        stats = dict(trained.stats)
        if self.selector.name != "oracle":
            stats["calibration"] = self.calibration(task, state)
        entry = dataclasses.replace(trained, selector_state=state, stats=stats)
        self.add(entry)
        return entry

    def calibration(self, task: Task, state: State) -> dict[str, Any]:
        """How ``task``'s own held-out inputs match its selector ``state`` alone: the score at
        each share of `CALIBRATION_LEVELS` (what ``predict(refuse=...)`` thresholds on).

        Held-out inputs are the validation split in the selector's views (whole and first
        sentence for gaussian_views); without one, the training texts (and the refusal of
        known inputs then runs above the asked share). Scores judged by the task's state alone
        never change as tasks are added, so the entry stays as it was learned.
        """
        examples = task.validation if task.validation else task.train
        texts = self.selector.training_texts([text for text, _ in examples])
        own = self.selector.own_scores(self._queries(texts), state)
        return calibration_record("validation" if task.validation else "train", own)

    def add(self, entry: TaskEntry) -> None:
        """Add a ready-made entry (from a file, or trained elsewhere), checking its name and
        shapes (`check_task_name`)."""
        check_task_name(entry.name)
        if entry.name in self.tasks:
            raise TaskDataError(f"task {quote_name(entry.name)} is already in the pool")
        if entry.generation is not None:
            self.backbone.check_generative()
        check_entry(
            entry, self.prompt_shape, self.backbone.hidden_size, self.selector, self.placement
        )
        problem = calibration_problem(entry.stats.get("calibration"))
        if problem:
            raise PoolFormatError(f"task {entry.name!r}: field 'stats.calibration' {problem}")
        self.entries.append(entry)

    # -- predicting -----------------------------------------------------------------------------
    def _states(self) -> list[State]:
        return [entry.selector_state for entry in self.entries]

    def _queries(self, texts: Sequence[str]) -> torch.Tensor:
        """The selector's features of ``texts``, as the prediction pass sees them."""
        prefix = self.placement.query_prefix(self.prompt_length)
        return self.backbone.query(list(texts), with_last=self.selector.with_last, prefix=prefix)

    def task_scores(self, texts: Sequence[str]) -> torch.Tensor:
        """How well each text matches each task, (B, T), higher is better (the selector's view)."""
        if not self.entries:
            raise TaskDataError("the pool has no task yet: learn one before predicting")
        return self.selector.task_scores(self._queries(texts), self._states())

    def route(
        self,
        texts: Sequence[str],
        *,
        min_score: float | Sequence[float | None] | None = None,
        refuse: float | Sequence[float | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Task index (B,) and routing score (B,) per text; `UNKNOWN_TASK` where refused.

        The routing half of `predict` (same ``min_score`` and ``refuse``), with no prompted pass.
        """
        if not self.entries:
            raise TaskDataError("the pool has no task yet: learn one before predicting")
        texts = list(texts)
        forced = forced_tasks(None, self.tasks, len(texts))
        routing = Routing.start(forced, min_score, refuse, self.selector, self.entries)
        if texts:
            routing.settle(self.selector, self._states(), range(len(texts)), self._queries(texts))
        return routing.routed, routing.scores

    @torch.no_grad()
    def predict(
        self,
        texts: Sequence[str],
        *,
        tasks: Sequence[str | None] | str | None = None,
        batch_size: int = 64,
        min_score: float | Sequence[float | None] | None = None,
        refuse: float | Sequence[float | None] | None = None,
        sampling: Sampling | None = None,
        beams: int = 1,
    ) -> list[Prediction]:
        """Label each text, or answer it for a text-to-text task (greedy; drawn under
        ``sampling``, or by beam search over ``beams`` beams, if given: see
        `continual.generate.generate`). Without ``tasks``, the selector routes each text to a
        task.

        ``tasks`` (one name, or one per text) bypasses routing: the oracle setting. In a
        per-text list, None routes that text, so forced and routed rows share one forward pass.
        ``min_score`` (one number, or one per text, None for no threshold) refuses routed texts
        whose routing score is below it: their task and label are None. It is on the selector's
        scale (cosine similarity for prototypes, minus a squared distance for gaussian) and does
        not apply to texts whose task was given.

        ``refuse`` (a share from 0.01 to 0.2, or one per text, None for none) is calibrated
        refusal: a routed text is refused when it
        matches its task, judged by that task's statistics alone, worse than that share of the
        task's own held-out inputs did when it was learned (see `calibration`). The held-out
        inputs include the selector's views (first sentences for gaussian_views), so whole
        inputs of a known task are refused less often than the share (on text4, about a third
        of it) and one-line inputs more often; inputs unlike every task are refused far more.
        """
        texts = list(texts)
        if not self.entries:
            raise TaskDataError("the pool has no task yet: learn one before predicting")
        if not texts:
            return []
        forced = forced_tasks(tasks, self.tasks, len(texts))
        routing = Routing.start(forced, min_score, refuse, self.selector, self.entries)
        routed = routing.routed
        one_pass = self.placement.deep
        open_rows = [i for i in range(len(texts)) if forced[i] == UNKNOWN_TASK]
        if open_rows and not one_pass:
            routing.settle(
                self.selector,
                self._states(),
                open_rows,
                self._queries([texts[i] for i in open_rows]),
            )
        labels, outputs, scores = self._stack().answer(
            texts,
            routed,
            batch_size,
            one_pass=one_pass,
            settle=lambda rows, queries: routing.settle(
                self.selector, self._states(), rows, queries
            ),
            sampling=sampling,
            beams=beams,
        )
        return [
            Prediction(
                text=text,
                task=None if routed[i] == UNKNOWN_TASK else self.tasks[int(routed[i])],
                label=labels[i],
                score=scores[i],
                routing_score=float(routing.scores[i]),
                output=outputs[i],
            )
            for i, text in enumerate(texts)
        ]

    def refusal_thresholds(self, share: float) -> list[float]:
        """Each task's own-score threshold for calibrated refusal at ``share`` (0.01 to 0.2).

        Raises `TaskDataError` for a share out of range or a task without calibration.
        """
        return refusal_thresholds(self.selector, self.entries, share)

    @torch.no_grad()
    def task_logits(
        self, tasks: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, C) of each row under its own task's prompt and head, in one forward pass.

        ``tasks`` (B,) holds entry indices; C is the most labels among the rows' tasks, and a
        task's missing classes get -inf.
        """
        return self._stack().logits(tasks, input_ids, attention_mask)

    def _stack(self) -> StackedEntries:
        return StackedEntries(self.backbone, self.placement, self.entries)

    def evaluate(
        self, task: Task | str, examples: Sequence[Example] | None = None, *, oracle: bool = False
    ) -> Score:
        """Accuracy (%) on ``examples`` (default: the task's test split) and routing accuracy.

        An input counts as correct only if it was routed to ``task`` and labelled right.
        For a text-to-text task, ``accuracy`` is the mean of its metric (points) over the
        examples, an input routed elsewhere scoring 0. With ``oracle``, inputs go to
        ``task``'s prompt directly and routing is not scored.
        """
        name = task if isinstance(task, str) else task.name
        if examples is None:
            if isinstance(task, str):
                raise TaskDataError("evaluate needs examples when given a task name only")
            examples = task.test
        if not examples:
            raise TaskDataError(f"task {name!r}: no examples to evaluate on")
        if name not in self.tasks:
            raise TaskDataError(_not_in_pool(name, self.tasks))
        entry = self.entries[self.tasks.index(name)]
        labels = set(entry.labels)
        for row, (_, gold) in enumerate(examples, start=1):
            if entry.generation is None and gold not in labels:
                raise TaskDataError(
                    f"task {name!r}, example {row}: label {gold!r} is not one of "
                    f"the task's labels {sorted(labels)}"
                )
        predictions = self.predict([text for text, _ in examples], tasks=name if oracle else None)
        return score_predictions(entry, examples, predictions, oracle=oracle)

    def bytes_per_task(self) -> list[int]:
        """Bytes each task's tensors take as stored (selector statistics may be float16)."""
        return [entry.bytes for entry in self.entries]

    # -- persistence ------------------------------------------------------------------------------
    def config(self) -> PoolConfig:
        """What a saved manifest records of this pool besides its tasks."""
        return PoolConfig(
            backbone=self.backbone.fingerprint(),
            hidden_size=self.backbone.hidden_size,
            prompt_length=self.prompt_length,
            placement=self.placement.name,
            selector=self.selector.config(),
            training=self.training.to_dict(),
        )

    def save(self, path: str | os.PathLike, *, lock: bool = True, wait: float = 0.0) -> Path:
        """Save atomically: task files first, then the manifest in one rename.

        A crash at any point leaves the previously saved pool loadable. The pool's lock is held
        while saving (`PoolLockedError` if another process holds it longer than ``wait``
        seconds); pass ``lock=False`` when the caller already holds it. Files of entries read
        from or saved to this folder before are not written again.
        """
        return self._files.save(path, self.config(), self.entries, lock=lock, wait=wait)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        backbone: Backbone | str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | None = None,
    ) -> PromptPool:
        """Load a saved pool, verifying checksums and that ``backbone`` is the one it was built on.

        ``backbone`` is a loaded `Backbone`, or a model name or folder to load (with the
        manifest's ``max_length``, ``query_layer``, pooling and precision, on ``device``).
        Without it, the manifest's backbone is loaded only if it is the packaged default or a
        hub name ``org/name`` that is not a local path: a manifest never makes this read an
        arbitrary local folder. ``dtype`` overrides the saved precision (the pool then refuses
        a mismatch); a pool built on a GPU loads on a CPU (entries are stored on the CPU).
        """
        pool_dir = Path(path)
        backbone, manifest, selector, training = open_pool(pool_dir, backbone, device, dtype)
        return cls._filled(backbone, pool_dir, manifest, selector, training)

    @classmethod
    def _filled(
        cls,
        backbone: Backbone,
        pool_dir: Path,
        manifest: dict[str, Any],
        selector: Selector,
        training: TrainingConfig,
        known: dict[str, TaskEntry] | None = None,
    ) -> PromptPool:
        """A pool with the manifest's settings and entries (those in ``known`` reused)."""
        with naming_the_manifest(pool_dir):
            pool = cls(
                backbone,
                prompt_length=manifest["prompt_length"],
                placement=manifest.get("placement", "input"),
                selector=selector,
                training=training,
            )
            for entry in saved_entries(pool_dir, manifest, known):
                pool.add(entry)
        pool._files.remember(pool_dir, manifest, pool.entries)
        if pool.entries:
            # Routing's pooled statistics are built here, not by the first routed batch.
            pool.selector.prepare(pool._states())
        return pool

    # -- managing tasks -----------------------------------------------------------------------
    def remove(self, name: str) -> TaskEntry:
        """Take task ``name`` out of the pool (in memory; `save` makes it stick) and return it.

        The other entries are untouched; they route among themselves from now on.
        """
        if name not in self.tasks:
            raise TaskDataError(_not_in_pool(name, self.tasks))
        entry = self.entries.pop(self.tasks.index(name))
        return entry

    def export_task(self, name: str, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write task ``name`` as one self-describing safetensors file (see `import_task`).

        ``path`` must be a new file outside any pool folder; ``force`` replaces an existing
        regular file (atomically). Devices, FIFOs and symbolic links are always refused.
        """
        if name not in self.tasks:
            raise TaskDataError(_not_in_pool(name, self.tasks))
        entry = self.entries[self.tasks.index(name)]
        config = self.selector.config()
        return export_entry(entry, path, config, self.backbone.fingerprint(), force=force)

    def import_task(self, path: str | os.PathLike, *, name: str | None = None) -> TaskEntry:
        """Add a task from a file written by `export_task` (in memory; `save` makes it stick).

        Refuses (naming the file) a task exported from another backbone, with another selector
        or a state this selector cannot use, a prompt of another length, or a name already in
        the pool (pass ``name`` to import it under another one).
        """
        entry = read_exported(
            path, name, self.backbone.fingerprint(), self.prompt_shape, self.selector, self.tasks
        )
        self.add(entry)
        return entry

    def reload(self, path: str | os.PathLike) -> PromptPool:
        """A new pool read from ``path`` on this pool's backbone (loaded once, shared).

        When this pool was loaded from or saved to ``path`` and the manifest's settings are
        unchanged, only what changed is read: the files of tasks added since, while tasks still
        named keep their entries (this pool's, shared) and tasks no longer named are dropped.
        The selector is shared too, so its pooled statistics are updated for the tasks added
        and removed, not rebuilt. Otherwise the pool is loaded whole, as `load` does.
        """
        pool_dir = Path(path)
        manifest = read_manifest(pool_dir)
        known = self._files.known(pool_dir, manifest, self.entries)
        if known is None:
            return type(self).load(path, self.backbone)
        return type(self)._filled(
            self.backbone, pool_dir, manifest, self.selector, self.training, known
        )


def _not_in_pool(name: object, tasks: list[str]) -> str:
    return f"task {quote_name(name)} is not in the pool; {pool_has(tasks)}"
