"""`PromptPoolStrategy`: a `PromptPool` grown and evaluated inside Avalanche's own loops, on the
library's own training loop (`continual.trainer`): an entry made here is the entry
`PromptPool.learn` makes on the same data with the same seed.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.utils.data import DataLoader

from ...classifier import ClassifierBatch
from ...data import Task
from ...errors import ContinualError, TaskDataError
from ...learner import classifier_entry, entry_stats, new_classifier
from ...pool import PromptPool
from ...selector import OracleSelector
from ...trainer import Trainer, TrainingResult
from . import checkpoint
from .convert import (
    LabelNames,
    _label_namer,
    benchmark_info,
    experience_task_labels,
    token_ids,
)
from .experiences import (
    ClassIds,
    SeededBatches,
    TokenSteps,
    experience_class_ids,
    experience_examples,
    experience_rows,
    find_benchmark,
    find_validation,
    same_weights,
    snapshot,
    task_name,
)
from .model import PromptPoolModel, TaskLabelMode
from .plugins import refuse_plugins

# Where an entry's Avalanche bookkeeping lives in ``TaskEntry.stats`` (saved in the manifest).
STATS_KEY = "avalanche"
CHECKPOINT_FILE = checkpoint.CHECKPOINT_FILE

_NO_MODEL = (
    "PromptPoolStrategy takes no model and no positional arguments: the pool is the model (its "
    "frozen backbone and a new prompt and head per experience); pass everything by name, "
    "PromptPoolStrategy(pool=PromptPool(...), optimizer=..., ...)"
)

OptimizerArg = (
    torch.optim.Optimizer | Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None
)


class PromptPoolStrategy(SupervisedTemplate):
    """An Avalanche strategy that grows a `PromptPool`: one entry per training experience.

    It takes the arguments of any ``SupervisedTemplate`` except ``model`` (the pool is the
    model) and trains through Avalanche's loop: at each experience a new soft prompt and head
    become ``strategy.model``'s only parameters, ``make_optimizer`` points the optimizer at them
    (its state reset, its object kept, so an ``LRSchedulerPlugin`` built on
    ``strategy.optimizer`` keeps working), and every epoch, iteration, backward and optimizer
    callback fires as in ``Naive``. At the end of the experience the prompt and head become a
    pool entry with `PromptPool.add_trained`; earlier entries are never touched.

    Validation and early stopping are `PromptPool.learn`'s: after each epoch the candidate's
    accuracy on the experience's validation data is measured; training stops after the pool's
    ``training.patience`` epochs without improvement and the best epoch's prompt and head are
    kept. The validation data come from ``validation`` (a stream), else from the benchmark's
    ``valid_stream`` (benchmarks made by `tasks_to_benchmark` or Avalanche's
    ``benchmark_from_datasets``), else from an ``eval_streams`` stream named ``valid*``; with
    none, a warning says the last epoch is kept. Pass ``validation=None`` to turn this off,
    e.g. to leave it to an ``EarlyStoppingPlugin``: the entry's ``best_epoch`` is then the
    epoch whose weights the plugin restored (0: the weights before training).

    Plugins that replay data or protect earlier weights (``ReplayPlugin``, ``EWCPlugin``,
    ``LwFPlugin``, …) are refused with the reason: nothing earlier is trained again here.
    Training an experience whose task is already in the pool is refused too (an entry is never
    changed; remove it from the pool first to train it again).

    Inputs are token ids (`tasks_to_benchmark`), texts (tokenized with the pool's backbone) or
    dicts with ``input_ids``. Targets are class ids (ints or tensors) or label names (strings,
    given class ids in order of first appearance).

    Task labels (``task_labels``) and one-class experiences: see `PromptPoolModel`.

    Args:
        pool: the pool to grow (by name: ``PromptPoolStrategy(pool=...)``). Entries it already
            has must carry their class ids (pools saved by this strategy do) or be given
            ``class_ids``. Its training config sets the head (linear or verbalizer), learning
            rates, batch size, epochs and patience.
        optimizer: an optimizer (its param groups are repointed at each new prompt and head:
            one group gets both, two groups get prompt and head), or a factory called once with
            two param groups, or None: Adam with the pool's ``prompt_lr`` and ``head_lr``.
        lr: with ``optimizer=None``, one learning rate for both prompt and head.
        criterion: default: the candidate's cross-entropy while it trains (as `PromptPool.learn`),
            cross-entropy on the routed scores in evaluation (see `continual.integrations.
            avalanche.model`).
        train_mb_size, train_epochs: default to the pool's ``training`` config.
        eval_mb_size, device, plugins, evaluator, eval_every, peval_mode: as for any Avalanche
            strategy. ``device`` also moves the pool's backbone.
        validation: a validation stream, ``"auto"`` or None (see above).
        task_labels: ``"auto"``, True or False (see above).
        task_names: a name per experience (default: the benchmark's, else ``experience_<i>``).
        label_names: a label name per global class id (default: the benchmark's, else the
            class id as a string).
        class_ids: global class ids of the entries already in ``pool`` (one list per entry)
            when the pool does not carry them.
        seed: seeds each new prompt and head (``seed + experience index``), as
            ``pool.learn(task, seed=seed + index)`` would.
    """

    def __new__(cls, *args: object, **kwargs: object) -> PromptPoolStrategy:
        # Avalanche binds a positional first argument to the model; here it would bind to the
        # pool and fail later with an unrelated message.
        if args:
            raise ContinualError(_NO_MODEL)
        return super().__new__(cls)

    def __init__(
        self,
        *,
        pool: PromptPool | None = None,
        model: object = None,
        optimizer: OptimizerArg = None,
        lr: float | None = None,
        criterion: Callable[..., torch.Tensor] | None = None,
        train_mb_size: int | None = None,
        train_epochs: int | None = None,
        eval_mb_size: int = 64,
        device: str | torch.device | None = None,
        plugins: Sequence[SupervisedPlugin] | None = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        peval_mode: str = "epoch",
        validation: Any = "auto",
        task_labels: TaskLabelMode = "auto",
        task_names: Sequence[str] | None = None,
        label_names: LabelNames | None = None,
        class_ids: Sequence[Sequence[int]] | None = None,
        seed: int = 0,
    ) -> None:
        if model is not None:
            raise ContinualError(_NO_MODEL)
        if not isinstance(pool, PromptPool):
            raise ContinualError(
                f"PromptPoolStrategy needs pool=PromptPool(...), got {type(pool).__name__}"
            )
        refuse_plugins(plugins or ())
        if isinstance(pool.selector, OracleSelector) and task_labels is False:
            raise ContinualError("the oracle selector needs task labels; pass task_labels=True")
        if pool.placement.deep:
            raise ContinualError(
                f"PromptPoolStrategy trains prompts at the input; this pool's placement is "
                f"{pool.placement!r} (use PromptPool.learn for deep prompts)"
            )
        if device is not None:
            pool.backbone.to(device)
        model_ = PromptPoolModel.for_pool(pool, class_ids, STATS_KEY)
        model_.use_task_labels = task_labels
        self._class_ids = ClassIds(self._taken_class_ids)
        for entry, ids in zip(pool.entries, model_.class_ids):
            if entry.stats.get(STATS_KEY, {}).get("named_targets"):
                self._class_ids.of_name.update(zip(entry.labels, ids))
        training = pool.training
        groups = [
            {"params": [nn.Parameter(torch.zeros(1))], "lr": lr or training.prompt_lr},
            {"params": [nn.Parameter(torch.zeros(1))], "lr": lr or training.head_lr},
        ]
        if optimizer is None:
            built: torch.optim.Optimizer = torch.optim.Adam(groups)
        elif isinstance(optimizer, torch.optim.Optimizer):
            built = optimizer
        else:
            built = optimizer(groups)
        if len(built.param_groups) not in (1, 2):
            raise ContinualError("the optimizer must have one or two param groups")
        self._custom_criterion = criterion
        super().__init__(
            model=model_,
            optimizer=built,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size or training.batch_size,
            train_epochs=train_epochs or training.epochs,
            eval_mb_size=eval_mb_size,
            device=pool.backbone.device if device is None else device,
            plugins=list(plugins) if plugins else None,
            evaluator=evaluator,
            eval_every=eval_every,
            peval_mode=peval_mode,
        )
        self.pool = pool
        self.validation = validation
        self.task_names = list(task_names) if task_names is not None else None
        self.label_names = label_names
        self.seed = seed
        self._trainer: Trainer | None = None
        self._batch: ClassifierBatch | None = None
        self._logits: torch.Tensor | None = None
        self._valid_examples: list[tuple[torch.Tensor, int]] = []
        self._epochs: list[tuple[dict[str, torch.Tensor], float | None]] = []
        self._train_eval_streams: list = []
        self._warned_no_validation = False
        self._started = 0.0
        self._task: Task | None = None

    # -- public ----------------------------------------------------------------------------
    @property
    def class_ids(self) -> list[list[int]]:
        """Global class ids of each pool entry's head outputs, in entry order."""
        return [list(ids) for ids in self.model.class_ids]

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Save the pool (safetensors, `PromptPool.save`), the strategy's counters and the
        evaluator's state (JSON, written atomically). Resume with `load_checkpoint`.

        The frozen backbone is not saved (a pool records its fingerprint); class ids and task
        labels are in each entry's stats.
        """
        self.pool.save(path)
        checkpoint.write_state(Path(path), self.clock, self.model.min_outputs, self.evaluator)
        return Path(path)

    @classmethod
    def load_checkpoint(
        cls, path: str | os.PathLike, backbone=None, **kwargs: Any
    ) -> PromptPoolStrategy:
        """A strategy on the pool saved by `save_checkpoint`, its counters and its evaluator's
        state restored (pass an evaluator built as the saved one was: the same metrics).

        ``backbone`` as for `PromptPool.load`; ``kwargs`` as for the constructor.
        """
        strategy = cls(pool=PromptPool.load(path, backbone), **kwargs)
        checkpoint.restore(strategy, Path(path))
        return strategy

    # -- Avalanche hooks -------------------------------------------------------------------
    def train(self, experiences, eval_streams=None, **kwargs):
        self._train_eval_streams = list(eval_streams or [])
        return super().train(experiences, eval_streams, **kwargs)

    def _unpack_minibatch(self) -> None:
        # Texts or dicts of token ids become ids, label names become class ids, before
        # Avalanche moves the batch to the device (which only tensors survive).
        batch = list(self.mbatch)  # type: ignore[has-type]
        if len(batch) < 2:
            raise TaskDataError(
                "PromptPoolStrategy needs batches of (inputs, targets[, task labels])"
            )
        batch[0] = token_ids(batch[0], self.pool.backbone)
        batch[1] = self._class_ids(batch[1])
        self.mbatch = batch
        super()._unpack_minibatch()

    def make_train_dataloader(self, num_workers=0, shuffle=True, pin_memory=None, **kwargs):
        """Batches of ``train_mb_size`` in the trainer's seeded order (as `PromptPool.learn`
        draws them), not Avalanche's shuffle."""
        dataset = self.adapted_dataset
        batches = SeededBatches(len(dataset), self.train_mb_size, self._epoch_order)
        self.dataloader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=getattr(dataset, "collate_fn", None),
            pin_memory=bool(pin_memory),
        )

    def forward(self):
        model = self.model
        if model.training and model.candidate is not None and self._trainer is not None:
            ids, mask = model.trimmed(self.mb_x)
            self._batch = ClassifierBatch(ids, mask, model.local_targets(self.mb_y))
            self._logits = self._trainer.forward(self._batch)
            return model.spread(self._logits)
        self._batch = self._logits = None
        return model(self.mb_x, self.mb_task_id if len(self.mbatch) >= 3 else None)

    def criterion(self):
        if self._custom_criterion is not None:
            return self._custom_criterion(self.mb_output, self.mb_y)
        if self._batch is not None and self._logits is not None and self._trainer is not None:
            return self._trainer.loss(self._logits, self._batch)
        return F.cross_entropy(self.mb_output, self.mb_y)

    def make_optimizer(self, **kwargs) -> None:
        """Point the optimizer at the new prompt and head, with a fresh state."""
        candidate = self.model.candidate
        if candidate is None:
            return
        prompt = list(candidate.prompt.parameters())
        head = [p for p in candidate.head.parameters() if p.requires_grad]  # none: verbalizer
        groups = self.optimizer.param_groups
        if len(groups) == 1:
            groups[0]["params"] = prompt + head
        else:
            groups[0]["params"], groups[1]["params"] = prompt, head
        self.optimizer.state.clear()
        self.optimized_param_id = dict(self.model.named_parameters())

    def _before_training_exp(self, **kwargs) -> None:
        self._start_candidate()
        super()._before_training_exp(**kwargs)

    def _after_training_epoch(self, **kwargs) -> None:
        self._end_epoch()
        super()._after_training_epoch(**kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        self._finish_candidate()
        super()._after_training_exp(**kwargs)

    def _before_eval_exp(self, **kwargs) -> None:
        # Output columns must cover the experience's classes even before they are learned, so
        # that every target has a column and the "refused" column is no class.
        classes = experience_class_ids(
            self.experience, self.pool.backbone, self._class_ids, self.eval_mb_size
        )
        if classes:
            self.model.min_outputs = max(self.model.min_outputs, max(classes) + 1)
        super()._before_eval_exp(**kwargs)

    # -- the candidate ---------------------------------------------------------------------
    def _epoch_order(self, size: int) -> torch.Tensor:
        if self._trainer is None:
            return torch.arange(size)  # a plugin iterating outside an experience's training
        return self._trainer.epoch_order(size)

    def _start_candidate(self) -> None:
        refuse_plugins(self.plugins)  # again: plugins may be appended after construction
        experience = self.experience
        index = experience.current_experience
        info = benchmark_info(find_benchmark(self.experience))
        if info is not None and info.pad_id != self.model.pad_id:
            raise ContinualError(
                f"the benchmark pads with id {info.pad_id} but the pool's tokenizer with "
                f"{self.model.pad_id}: build the benchmark with the pool's backbone"
            )
        backbone, batch_size = self.pool.backbone, self.eval_mb_size
        texts, targets = experience_examples(experience, backbone, self._class_ids, batch_size)
        classes = sorted(set(targets))
        if (
            info is not None
            and index < len(info.class_ids)
            and sorted(info.class_ids[index]) == classes
        ):
            classes = list(info.class_ids[index])  # the task's label order
        namer = self._namer(info)
        labels = [namer(c) for c in classes]
        if len(labels) == 1:
            labels.append(f"not {labels[0]}")
        name = task_name(self.task_names, info, index)
        if name in self.pool.tasks:
            raise TaskDataError(
                f"experience {index} (task {name!r}) is already in the pool: an entry is never "
                f"trained again; to train it anew, pool.remove({name!r}) first"
            )
        local = {c: number for number, c in enumerate(classes)}
        validation = self._find_validation(index)
        valid_texts, valid_targets = (
            experience_examples(validation, backbone, self._class_ids, batch_size)
            if validation
            else ([], [])
        )
        self._task = Task(
            name=name,
            train=[(text, labels[local[c]]) for text, c in zip(texts, targets)],
            validation=[
                (text, labels[local[c]])
                for text, c in zip(valid_texts, valid_targets)
                if c in local  # other classes cannot be scored by this head
            ],
            labels=labels,
        )
        seed = self.seed + index
        generator = torch.Generator().manual_seed(seed)
        config = self.pool.training
        candidate = new_classifier(
            self.pool.backbone, self.pool.prompt_length, labels, config, generator
        )
        self._trainer = Trainer(
            TokenSteps(self.pool.backbone, candidate, labels, config.batch_size, self.model),
            self.optimizer,
            epochs=self.train_epochs,
            batch_size=self.train_mb_size,
            patience=config.patience if self.validation is not None else 0,
            generator=generator,
            device=self.pool.backbone.device,
        )
        self._valid_examples = (
            [
                (ids, local[c])
                for ids, c in zip(experience_rows(validation, backbone, batch_size), valid_targets)
                if c in local
            ]
            if validation
            else []
        )
        # The selector state depends on the inputs only (the backbone is frozen): fitted now,
        # it lets periodic evaluation route to the candidate while it trains.
        selector = self.pool.selector
        queries = backbone.query(selector.training_texts(texts), with_last=selector.with_last)
        state = selector.fit_task(queries, [e.selector_state for e in self.pool.entries], seed=seed)
        task_labels = experience_task_labels(experience)
        task_label = task_labels[0] if len(task_labels) == 1 else None
        self.model.start_candidate(candidate, classes, task_label, state)
        self._epochs = [(snapshot(candidate), None)]  # epoch 0: before training
        self._started = time.perf_counter()

    def _end_epoch(self) -> None:
        """Validation and early stopping after an epoch, as `Trainer.fit` does them."""
        trainer, candidate = self._trainer, self.model.candidate
        if trainer is None or candidate is None:
            return
        epoch = len(self._epochs)
        score = trainer.validation(self._valid_examples) if self._valid_examples else None
        self._epochs.append((snapshot(candidate), score))
        if score is not None and trainer.early_stopping.update(epoch, score, candidate):
            self.stop_training()

    def _finish_candidate(self) -> None:
        model, trainer, task = self.model, self._trainer, self._task
        candidate = model.candidate
        if candidate is None or trainer is None or task is None:
            return
        trainer.early_stopping.restore(candidate)
        # The epoch whose weights the candidate holds: the trainer's best, or the one a plugin
        # (EarlyStoppingPlugin) restored, or the last.
        held = snapshot(candidate)
        epoch = max(
            (e for e, (state, _) in enumerate(self._epochs) if same_weights(state, held)),
            default=len(self._epochs) - 1,
        )
        result = TrainingResult(
            epochs_run=len(self._epochs) - 1, best_epoch=epoch, best_score=self._epochs[epoch][1]
        )
        config = self.pool.training
        stats = entry_stats(
            result,
            candidate,
            train_examples=len(task.train),
            seconds=time.perf_counter() - self._started,
            head=config.head,
            seed=self.seed + self.experience.current_experience,
        )
        stats[STATS_KEY] = {
            "class_ids": list(model.candidate_class_ids),
            "task_label": model.candidate_task_label,
            "named_targets": bool(self._class_ids.of_name),
        }
        entry = classifier_entry(task.name, task.labels, candidate, stats)
        self.pool.add_trained(task, entry, seed=stats["seed"])
        model.finish_candidate()
        self._trainer = self._task = None
        self._epochs = []
        self._valid_examples = []

    def _namer(self, info) -> Callable[[int], str]:
        fallback = _label_namer(self.label_names, info)
        return lambda class_id: self._class_ids.name(class_id) or fallback(class_id)

    def _taken_class_ids(self) -> list[int]:
        model = self.model
        return [c for ids in model.class_ids for c in ids] + model.candidate_class_ids

    def _find_validation(self, index: int):
        if self.validation is None:
            return None
        given = None if self.validation == "auto" else self.validation
        found = find_validation(
            given, find_benchmark(self.experience), self._train_eval_streams, index
        )
        if found is None and not self._warned_no_validation:
            self._warned_no_validation = True
            warnings.warn(
                "PromptPoolStrategy found no validation stream (pass validation=... or "
                "a benchmark with a valid_stream): the last epoch's prompt is kept; "
                "validation=None silences this",
                stacklevel=5,
            )
        return found
