"""`PromptPoolStrategy`: a `PromptPool` grown and evaluated inside Avalanche's own loops.

Each training experience trains one new soft prompt and linear head through Avalanche's
``SupervisedTemplate`` loop (its epochs, iterations, ``make_optimizer``, ``backward`` and
``optimizer_step``, with every plugin callback), then adds them to the pool as a new entry.
``strategy.eval(stream)`` is Avalanche's evaluation loop over `PromptPoolModel`.

The loss (`PromptPoolModel`): every input is routed to one entry (by its task label in a
task-incremental scenario, else by the pool's selector) and scored by that entry's head; the
output is the routed head's log-probabilities on its own classes and ``FLOOR_LOG_PROB`` on
every other class. Cross-entropy on that output is the routed head's cross-entropy for an
input routed right, and about ``-FLOOR_LOG_PROB`` (9.2 nats) for an input routed to another
task or refused: a misrouted input costs as much as a head that gives its class 1e-4.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.utils.data import DataLoader

from ...entry import TaskEntry
from ...errors import ContinualError, TaskDataError
from ...pool import PromptPool
from ...prompt import SoftPrompt, prompted_features
from ...selector import UNKNOWN_TASK, OracleSelector
from ...storage import atomic_write_bytes
from .convert import (
    LabelNames,
    _label_namer,
    attention_mask,
    benchmark_info,
    decode_ids,
    experience_classes,
    experience_task_labels,
    pad_token_id,
)

# Log-probability every class outside the routed entry gets. A misrouted (or refused) input
# therefore has a loss of about -FLOOR_LOG_PROB = log(1e4) = 9.21 nats: finite, and far above
# the loss of any input routed right whose head gives its class more than 1e-4.
FLOOR_LOG_PROB = math.log(1e-4)
# Kept for the names of earlier versions: the value other classes' outputs get.
OTHER_TASK_LOGIT = FLOOR_LOG_PROB
# Where an entry's Avalanche bookkeeping lives in ``TaskEntry.stats`` (saved in the manifest).
STATS_KEY = "avalanche"
CHECKPOINT_FILE = "avalanche_strategy.json"

TaskLabelMode = Literal["auto"] | bool


# ---------------------------------------------------------------------------------------------
# The prompt pool inside Avalanche


class Candidate(nn.Module):
    """The new entry being trained: a soft prompt and a linear head (the only parameters)."""

    def __init__(self, prompt: SoftPrompt, head: nn.Linear) -> None:
        super().__init__()
        self.prompt = prompt
        self.head = head


class PromptPoolModel(nn.Module):
    """A `PromptPool` as an Avalanche model: token ids (B, n) → scores over global classes.

    In training mode (a candidate set) the output is the candidate's log-probabilities on the
    new experience's classes and `FLOOR_LOG_PROB` elsewhere. In eval mode each row is routed to
    one entry (the candidate included while it trains, so periodic evaluation and early stopping
    see it): by its task label when task labels are used, else by the selector; the output is
    the routed head's log-probabilities on its classes and `FLOOR_LOG_PROB` elsewhere. The last
    column means "refused" (selector ``min_score``, or a task label no entry has): 0 there for
    such rows, and no target ever points to it.

    The pool is a plain attribute, not a submodule: ``parameters()`` and ``state_dict()`` are
    the candidate's alone, which is what Avalanche's optimizer and plugins handle.
    """

    def __init__(self, pool: PromptPool, pad_id: int) -> None:
        super().__init__()
        self.pool = pool
        self.pad_id = pad_id
        self.class_ids: list[list[int]] = []  # global class id of each entry's head output
        self.task_labels: list[int | None] = []  # the experience task label of each entry
        self.min_outputs = 0  # outputs needed to cover every class id seen so far
        self.use_task_labels: TaskLabelMode = "auto"
        self.candidate: Candidate | None = None
        self.candidate_class_ids: list[int] = []
        self.candidate_task_label: int | None = None
        self.candidate_state: dict[str, torch.Tensor] = {}

    def add_task(self, class_ids: Sequence[int], task_label: int | None = None) -> None:
        """Record the global class ids (and task label) of the entry just added to the pool."""
        self.class_ids.append([int(c) for c in class_ids])
        self.task_labels.append(task_label)

    @property
    def num_classes(self) -> int:
        """Class outputs (the "refused" column not counted)."""
        ids = self.class_ids + [self.candidate_class_ids]
        known = max((max(c) + 1 for c in ids if c), default=0)
        return max(known, self.min_outputs)

    def _labels_in_use(self, task_labels: list[int | None]) -> bool:
        if self.use_task_labels is not True and self.use_task_labels is not False:
            # auto: task-incremental exactly when every entry has its own task label.
            known = [t for t in task_labels if t is not None]
            return bool(known) and len(known) == len(task_labels) == len(set(known))
        return bool(self.use_task_labels)

    def candidate_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The candidate head's logits (B, C) on its experience's classes (with gradients)."""
        assert self.candidate is not None
        features = prompted_features(self.pool.backbone, self.candidate.prompt(len(ids)), ids, mask)
        return self.candidate.head(features)

    def forward(self, ids: torch.Tensor, task_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, num_classes + 1) of token ids (B, n); see the class docstring."""
        device = self.pool.backbone.device
        ids = ids.long().to(device)
        mask = attention_mask(ids, self.pad_id)
        keep = mask.bool().any(0)  # drop all-padding columns: less compute, same features
        ids, mask = ids[:, keep], mask[:, keep]
        out = torch.full((len(ids), self.num_classes + 1), FLOOR_LOG_PROB, device=device)
        if self.training and self.candidate is not None:
            columns = torch.tensor(self.candidate_class_ids, device=device)
            local = self.candidate_logits(ids, mask).log_softmax(1)
            return out.index_copy(1, columns, local[:, : len(columns)])
        with torch.no_grad():
            return self._routed(ids, mask, task_labels, out)

    def _routed(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        task_labels: torch.Tensor | None,
        out: torch.Tensor,
    ) -> torch.Tensor:
        entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = [
            (e.prompt, e.head_weight, e.head_bias) for e in self.pool.entries
        ]
        class_ids = list(self.class_ids)
        labels = list(self.task_labels)
        states = [e.selector_state for e in self.pool.entries]
        if self.candidate is not None:
            entries.append(
                (
                    self.candidate.prompt.vectors.detach(),
                    self.candidate.head.weight.detach(),
                    self.candidate.head.bias.detach(),
                )
            )
            class_ids.append(self.candidate_class_ids)
            labels.append(self.candidate_task_label)
            states.append(self.candidate_state)
        device = out.device
        if not entries:  # nothing learned yet: every input is refused
            out[:, -1] = 0.0
            return out
        if task_labels is not None and self._labels_in_use(labels):
            where = {label: index for index, label in enumerate(labels)}
            routed = torch.tensor(
                [where.get(int(t), UNKNOWN_TASK) for t in task_labels.tolist()], device=device
            )
        else:
            if isinstance(self.pool.selector, OracleSelector):
                raise ContinualError(
                    "the oracle selector routes by task label, and this scenario gives none "
                    "(or the same one to several experiences)"
                )
            with_last = self.pool.selector.with_last
            queries = self.pool.backbone.query_ids(ids, mask, with_last=with_last).cpu()
            routed = self.pool.selector.route(queries, states)[0].to(device)
        refused = routed == UNKNOWN_TASK
        out[refused, -1] = 0.0
        prompts = torch.stack([prompt.to(device) for prompt, _, _ in entries])
        rows = (~refused).nonzero().squeeze(1)
        if len(rows):
            index = routed[rows]
            features = prompted_features(self.pool.backbone, prompts[index], ids[rows], mask[rows])
            for task in index.unique().tolist():
                chosen = index == task
                _, weight, bias = entries[task]
                local = (features[chosen] @ weight.to(device).T + bias.to(device)).log_softmax(1)
                columns = torch.tensor(class_ids[task], device=device)
                out[rows[chosen].unsqueeze(1), columns] = local[:, : len(columns)]
        return out


OptimizerArg = (
    torch.optim.Optimizer | Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None
)


class PromptPoolStrategy(SupervisedTemplate):
    """An Avalanche strategy that grows a `PromptPool`: one entry per training experience.

    It takes the arguments of any ``SupervisedTemplate`` and trains through Avalanche's loop:
    at each experience a new soft prompt and head (`Candidate`) become ``strategy.model``'s
    only parameters, ``make_optimizer`` points the optimizer at them (its state reset, its
    object kept, so an ``LRSchedulerPlugin`` built on ``strategy.optimizer`` keeps working),
    and every epoch, iteration, backward and optimizer callback fires as in ``Naive``. At the
    end of the experience the prompt and head become a pool entry, with the selector state
    fitted on the experience's training inputs (as `PromptPool.add_trained` does); earlier
    entries are never touched.

    Validation: after each epoch the candidate's accuracy on the experience's validation data
    is measured and the best epoch's prompt and head are kept (training stops after the pool's
    ``training.patience`` epochs without improvement). The validation data come from
    ``validation`` (a stream), else from the benchmark's ``valid_stream``, else from an
    ``eval_streams`` stream named ``valid*``; with none, a warning says the last epoch is kept.
    Pass ``validation=None`` to turn this off (e.g. to leave it to ``EarlyStoppingPlugin``).

    Task labels: with ``task_labels="auto"`` (default) inputs are routed by their task label
    when every entry was trained on an experience with its own task label (task-incremental:
    the oracle path), and by the selector otherwise (class-incremental, all labels 0).
    ``True``/``False`` force either.

    One-class experiences (class-incremental splits): the entry's head has the class and a
    "not <class>" output (the pool stores at least two labels); with no negative examples the
    head always answers the class, so the class is decided by routing: the selector, fitted on
    each class's inputs, is then a class-conditional classifier over frozen features
    (Gaussian by default, as in streaming LDA). Accuracy is the selector's.

    Args:
        pool: the pool to grow. Entries it already has must carry their class ids (pools saved
            by this strategy do) or be given ``class_ids``.
        optimizer: an optimizer (its param groups are repointed at each new prompt and head:
            one group gets both, two groups get prompt and head), or a factory called once with
            two param groups, or None: Adam with the pool's ``prompt_lr`` and ``head_lr``.
        lr: with ``optimizer=None``, one learning rate for both prompt and head.
        criterion: default: cross-entropy on the routed scores (see the module docstring).
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
        seed: seeds each new prompt and head (``seed + experience index``).
    """

    def __init__(
        self,
        *,
        pool: PromptPool,
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
        if isinstance(pool.selector, OracleSelector) and task_labels is False:
            raise ContinualError("the oracle selector needs task labels; pass task_labels=True")
        if pool.placement != "input":
            raise ContinualError(
                f"PromptPoolStrategy trains prompts at the input; this pool's placement is "
                f"{pool.placement!r} (use PromptPool.learn for deep prompts)"
            )
        if pool.training.head != "linear":
            raise ContinualError(
                f"PromptPoolStrategy trains linear heads; the pool's training config asks for "
                f"head={pool.training.head!r} (use PromptPool.learn for verbalizer heads)"
            )
        if device is not None:
            pool.backbone.to(device)
            pool._stacked = None  # stacked prompts and heads were built on the old device
        model = PromptPoolModel(pool, pad_token_id(pool.backbone.tokenizer))
        model.use_task_labels = task_labels
        for number, entry in enumerate(pool.entries):
            saved = entry.stats.get(STATS_KEY, {})
            ids = class_ids[number] if class_ids is not None else saved.get("class_ids")
            if ids is None:
                raise ContinualError(
                    f"pool entry {entry.name!r} has no class ids: give class_ids for each "
                    f"entry (the pool has {len(pool.entries)})"
                )
            model.add_task(ids, saved.get("task_label"))
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
            model=model,
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
        self.patience = training.patience
        self._best: tuple[float, dict[str, torch.Tensor], int] | None = None
        self._stale = 0
        self._valid_experience: Any = None
        self._train_eval_streams: list = []
        self._warned_no_validation = False
        self._entry_info: dict[str, Any] = {}

    # -- public ----------------------------------------------------------------------------
    @property
    def class_ids(self) -> list[list[int]]:
        """Global class ids of each pool entry's head outputs, in entry order."""
        return [list(ids) for ids in self.model.class_ids]

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Save the pool (safetensors, `PromptPool.save`) and the strategy's counters.

        The frozen backbone is not saved (a pool records its fingerprint); class ids and task
        labels are in each entry's stats. Resume with `load_checkpoint`.
        """
        folder = Path(path)
        self.pool.save(folder)
        clock = {key: getattr(self.clock, key) for key in _CLOCK_KEYS}
        state = {"clock": clock, "min_outputs": self.model.min_outputs}
        # Atomic, like the pool: a crash leaves the previous counters, never half a file.
        atomic_write_bytes(folder / CHECKPOINT_FILE, (json.dumps(state, indent=2) + "\n").encode())
        return folder

    @classmethod
    def load_checkpoint(
        cls, path: str | os.PathLike, backbone=None, **kwargs: Any
    ) -> PromptPoolStrategy:
        """A strategy on the pool saved by `save_checkpoint`, its counters restored.

        ``backbone`` as for `PromptPool.load`; ``kwargs`` as for the constructor.
        """
        folder = Path(path)
        strategy = cls(pool=PromptPool.load(folder, backbone), **kwargs)
        state_file = folder / CHECKPOINT_FILE
        if state_file.is_file():
            state = _read_checkpoint_state(state_file)
            for key, value in state["clock"].items():
                setattr(strategy.clock, key, value)
            strategy.model.min_outputs = state["min_outputs"]
        return strategy

    # -- Avalanche hooks -------------------------------------------------------------------
    def train(self, experiences, eval_streams=None, **kwargs):
        self._train_eval_streams = list(eval_streams or [])
        return super().train(experiences, eval_streams, **kwargs)

    def forward(self):
        return self.model(self.mb_x, self.mb_task_id if len(self.mbatch) >= 3 else None)

    def criterion(self):
        if self._custom_criterion is not None:
            return self._custom_criterion(self.mb_output, self.mb_y)
        if self.is_training and self.model.candidate is not None:
            # The candidate's own cross-entropy on its classes (the floor columns left out).
            columns = torch.tensor(self.model.candidate_class_ids, device=self.mb_output.device)
            return F.nll_loss(self.mb_output[:, columns], self._local_targets(self.mb_y))
        return F.cross_entropy(self.mb_output, self.mb_y)

    def make_optimizer(self, **kwargs) -> None:
        """Point the optimizer at the new prompt and head, with a fresh state."""
        candidate = self.model.candidate
        if candidate is None:
            return
        groups = self.optimizer.param_groups
        if len(groups) == 1:
            groups[0]["params"] = list(candidate.parameters())
        else:
            groups[0]["params"] = list(candidate.prompt.parameters())
            groups[1]["params"] = list(candidate.head.parameters())
        self.optimizer.state.clear()
        self.optimized_param_id = dict(self.model.named_parameters())

    def _before_training_exp(self, **kwargs) -> None:
        self._start_candidate()
        super()._before_training_exp(**kwargs)

    def _after_training_epoch(self, **kwargs) -> None:
        self._check_validation()
        super()._after_training_epoch(**kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        self._finish_candidate()
        super()._after_training_exp(**kwargs)

    def _before_eval_exp(self, **kwargs) -> None:
        # Output columns must cover the experience's classes even before they are learned, so
        # that every target has a column and the "refused" column is no class.
        classes = experience_classes(self.experience)
        if classes:
            self.model.min_outputs = max(self.model.min_outputs, max(classes) + 1)
        super()._before_eval_exp(**kwargs)

    # -- the candidate ---------------------------------------------------------------------
    def _benchmark(self):
        return getattr(getattr(self.experience, "origin_stream", None), "benchmark", None)

    def _start_candidate(self) -> None:
        experience = self.experience
        index = experience.current_experience
        info = benchmark_info(self._benchmark())
        if info is not None and info.pad_id != self.model.pad_id:
            raise ContinualError(
                f"the benchmark pads with id {info.pad_id} but the pool's tokenizer with "
                f"{self.model.pad_id}: build the benchmark with the pool's backbone"
            )
        classes = experience_classes(experience)
        if (
            info is not None
            and index < len(info.class_ids)
            and sorted(info.class_ids[index]) == classes
        ):
            classes = list(info.class_ids[index])
        if not classes:
            raise TaskDataError(f"experience {index} has no examples")
        namer = _label_namer(self.label_names, info)
        labels = [namer(c) for c in classes]
        if len(labels) == 1:
            labels.append(f"not {labels[0]}")
        if self.task_names is not None:
            name = self.task_names[index]
        elif info is not None and index < len(info.task_names):
            name = info.task_names[index]
        else:
            name = f"experience_{index}"
        while name in self.pool.tasks:
            name = f"{name}+"
        task_labels = experience_task_labels(experience)
        task_label = task_labels[0] if len(task_labels) == 1 else None
        backbone = self.pool.backbone
        generator = torch.Generator().manual_seed(self.seed + index)
        config = self.pool.training
        prompt = SoftPrompt.initialise(
            backbone,
            self.pool.prompt_length,
            config.prompt_init,
            text=config.prompt_text,
            generator=generator,
        )
        head = nn.Linear(backbone.hidden_size, len(labels), device="meta").to_empty(device="cpu")
        with torch.no_grad():
            head.weight.normal_(0.0, 0.02, generator=generator)
            head.bias.zero_()
        model = self.model
        model.candidate = Candidate(prompt, head).to(backbone.device)
        model.candidate_class_ids = classes
        model.candidate_task_label = task_label
        model.min_outputs = max(model.min_outputs, max(classes) + 1)
        # The selector state depends on the inputs only (the backbone is frozen): fitted now,
        # it lets periodic evaluation route to the candidate while it trains.
        queries = self._queries(experience.dataset.eval())
        model.candidate_state = self.pool.selector.fit_task(
            queries, [e.selector_state for e in self.pool.entries], seed=self.seed
        )
        self._entry_info = {"name": name, "labels": labels, "examples": len(experience.dataset)}
        self._valid_experience = self._find_validation(index)
        self._best = None
        self._stale = 0

    def _queries(self, dataset) -> torch.Tensor:
        """Query features of an experience's inputs, fitted as `PromptPool.add_trained` fits
        them: the selector's own training views (e.g. each text's first sentence) and width."""
        tokenizer = self.pool.backbone.tokenizer
        texts: list[str] = []
        collate = getattr(dataset, "collate_fn", None)
        for batch in DataLoader(dataset, batch_size=self.eval_mb_size, collate_fn=collate):
            texts += decode_ids(batch[0].long(), tokenizer)
        selector = self.pool.selector
        return self.pool.backbone.query(
            selector.training_texts(texts), with_last=selector.with_last
        )

    def _find_validation(self, index: int):
        if self.validation is None:
            return None
        stream = self.validation if self.validation != "auto" else None
        if stream is None:
            stream = getattr(self._benchmark(), "valid_stream", None)
        if stream is None:
            for candidate in self._train_eval_streams:
                if str(getattr(candidate, "name", "")).startswith("valid"):
                    stream = candidate
                    break
        if stream is None:
            if not self._warned_no_validation:
                self._warned_no_validation = True
                warnings.warn(
                    "PromptPoolStrategy found no validation stream (pass validation=... or "
                    "a benchmark with a valid_stream): the last epoch's prompt is kept; "
                    "validation=None silences this",
                    stacklevel=4,
                )
            return None
        experiences = list(stream)
        for experience in experiences:
            if experience.current_experience == index:
                return experience
        return experiences[index] if index < len(experiences) else None

    def _local_targets(self, targets: torch.Tensor) -> torch.Tensor:
        lookup = torch.full(
            (self.model.num_classes + 1,), -100, dtype=torch.long, device=targets.device
        )
        columns = torch.tensor(self.model.candidate_class_ids, device=targets.device)
        lookup[columns] = torch.arange(len(columns), device=targets.device)
        return lookup[targets]

    @torch.no_grad()
    def _check_validation(self) -> None:
        experience = self._valid_experience
        candidate = self.model.candidate
        if experience is None or candidate is None:
            return
        dataset = experience.dataset.eval()
        collate = getattr(dataset, "collate_fn", None)
        correct = total = 0
        device = self.pool.backbone.device
        for batch in DataLoader(dataset, batch_size=self.eval_mb_size, collate_fn=collate):
            ids = batch[0].long().to(device)
            targets = self._local_targets(torch.as_tensor(batch[1]).long().to(device))
            mask = attention_mask(ids, self.model.pad_id)
            keep = mask.bool().any(0)
            predicted = self.model.candidate_logits(ids[:, keep], mask[:, keep]).argmax(1)
            correct += int((predicted == targets).sum())
            total += len(targets)
        accuracy = correct / max(total, 1)
        epoch = self.clock.train_exp_epochs + 1
        if self._best is None or accuracy > self._best[0]:
            state = {k: v.detach().clone() for k, v in candidate.state_dict().items()}
            self._best = (accuracy, state, epoch)
            self._stale = 0
        else:
            self._stale += 1
            if self.patience and self._stale >= self.patience:
                self.stop_training()

    def _finish_candidate(self) -> None:
        model = self.model
        candidate = model.candidate
        if candidate is None:
            return
        if self._best is not None:
            candidate.load_state_dict(self._best[1])
        info = self._entry_info
        stats = {
            "train_examples": info["examples"],
            "epochs_run": self.clock.train_exp_epochs,
            "best_epoch": self._best[2] if self._best else self.clock.train_exp_epochs,
            "validation_accuracy": None if self._best is None else round(100 * self._best[0], 2),
            "trainable_parameters": sum(p.numel() for p in candidate.parameters()),
            "seed": self.seed + self.experience.current_experience,
            STATS_KEY: {
                "class_ids": list(model.candidate_class_ids),
                "task_label": model.candidate_task_label,
            },
        }
        entry = TaskEntry(
            name=info["name"],
            labels=info["labels"],
            prompt=candidate.prompt.vectors.detach().cpu().clone(),
            head_weight=candidate.head.weight.detach().cpu().clone(),
            head_bias=candidate.head.bias.detach().cpu().clone(),
            selector_state=model.candidate_state,
            stats=stats,
        )
        self.pool.add(entry)
        model.add_task(model.candidate_class_ids, model.candidate_task_label)
        model.candidate = None
        model.candidate_class_ids = []
        model.candidate_task_label = None
        model.candidate_state = {}
        self._best = None


_CLOCK_KEYS = (
    "train_iterations",
    "train_exp_counter",
    "train_exp_epochs",
    "train_exp_iterations",
    "train_epoch_iterations",
    "total_iterations",
)


def _read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The counters `save_checkpoint` wrote, checked: a clear error naming the file if not."""
    from ...errors import PoolFormatError
    from ...files import read_regular_file

    data = read_regular_file(path, limit=1 << 20, error=PoolFormatError, what="checkpoint")
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PoolFormatError(f"{path}: not valid JSON ({error})") from None
    clock = state.get("clock", {}) if isinstance(state, dict) else None
    if not isinstance(clock, dict) or not all(
        key in _CLOCK_KEYS and type(value) is int and value >= 0 for key, value in clock.items()
    ):
        raise PoolFormatError(f"{path}: field 'clock' must map {', '.join(_CLOCK_KEYS)} to counts")
    minimum = state.get("min_outputs", 0)
    if type(minimum) is not int or minimum < 0:
        raise PoolFormatError(f"{path}: field 'min_outputs' must be a count, got {minimum!r}")
    return {"clock": clock, "min_outputs": minimum}
