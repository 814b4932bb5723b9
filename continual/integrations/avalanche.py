"""Avalanche (``avalanche-lib`` 0.6.0) integration: benchmarks, a prompt-pool strategy, baselines.

Three parts:

* Converters. `tasks_to_benchmark` turns a sequence of our `Task` objects into an Avalanche
  benchmark with one experience per task; `benchmark_to_tasks` goes back.
* `PromptPoolStrategy`, an Avalanche ``SupervisedTemplate`` that drives a `PromptPool`:
  ``strategy.train(experience)`` adds one pool entry with the pool's own training
  (`PromptPool.learn`), and ``strategy.eval(stream)`` runs Avalanche's ordinary evaluation
  loop, so Avalanche's metrics (accuracy, forgetting, BWT, ...) and loggers work unchanged.
* `AvalancheMethod`: Avalanche's Naive, EWC, LwF and Replay strategies, fully fine-tuning a copy
  of the backbone, behind our benchmark's `Method` protocol.

Data layout of a benchmark built here:

* inputs ``x``: token ids, a ``LongTensor`` (N, max_length) padded on the right to
  ``backbone.max_length`` with the tokenizer's pad id. No attention mask is stored: it is
  ``ids != pad_id`` (`attention_mask`). Keeping ``x`` a plain tensor means Avalanche's default
  collation, ``_unpack_minibatch`` and every plugin that reads ``strategy.mb_x`` work as is.
* targets ``y``: global class ids over the union of all tasks' labels in sequence order: task 0's
  labels (in ``task.labels`` order) are 0..C0-1, task 1's come next, and so on.
* task labels: experience i has task label i (or 0 for all with ``task_labels=False``, the
  usual class-incremental setting). `PromptPoolStrategy` never reads them.
* streams: ``train_stream`` and ``test_stream``, plus ``valid_stream`` when every task has a
  validation split (the strategy early-stops on it, as `PromptPool.learn` does).
* ``benchmark.continual_info``: a `BenchmarkInfo` with the task names, label names and pad id,
  so that `benchmark_to_tasks` and `PromptPoolStrategy` can name tasks and labels as they were.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.models import IncrementalClassifier
from avalanche.training import EWC, LwF, Naive, Replay
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..backbone import Backbone
from ..data import Example, Task
from ..errors import ContinualError, TaskDataError
from ..pool import PromptPool
from ..selector import UNKNOWN_TASK, OracleSelector

__all__ = [
    "INFO_ATTRIBUTE",
    "OTHER_TASK_LOGIT",
    "AvalancheMethod",
    "BenchmarkInfo",
    "EncoderClassifier",
    "PromptPoolModel",
    "PromptPoolStrategy",
    "STRATEGIES",
    "attention_mask",
    "benchmark_info",
    "benchmark_to_tasks",
    "decode_ids",
    "encode_texts",
    "experience_tensors",
    "pad_token_id",
    "tasks_to_benchmark",
]

INFO_ATTRIBUTE = "continual_info"
# Logit given to classes a row was not routed to. Finite (unlike -inf) so that Avalanche's loss
# metrics stay finite; far below any real logit, so argmax never picks such a class.
OTHER_TASK_LOGIT = -1e9

LabelNames = Sequence[str] | Mapping[int, str]


# ---------------------------------------------------------------------------------------------
# Converters


@dataclass(frozen=True)
class BenchmarkInfo:
    """What `tasks_to_benchmark` records on a benchmark (``benchmark.continual_info``).

    Attributes:
        task_names: the name of each experience's task.
        class_ids: each task's global class ids, in the order of its ``labels``.
        label_names: the label name of each global class id.
        pad_id: the pad token id the inputs are padded with.
        max_length: the inputs' width.
    """

    task_names: list[str]
    class_ids: list[list[int]]
    label_names: list[str]
    pad_id: int
    max_length: int


def benchmark_info(benchmark: object) -> BenchmarkInfo | None:
    """The `BenchmarkInfo` of a benchmark built by `tasks_to_benchmark`, else None."""
    info = getattr(benchmark, INFO_ATTRIBUTE, None)
    return info if isinstance(info, BenchmarkInfo) else None


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id; raises `ContinualError` for a tokenizer without one."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ContinualError(
            "the tokenizer has no pad token, so padded token ids cannot be told from real ones; "
            "set tokenizer.pad_token first"
        )
    return int(pad)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Token ids (N, max_length), truncated and right-padded to ``max_length`` with the pad id."""
    if not texts:
        return torch.zeros(0, max_length, dtype=torch.long)
    batch = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return batch["input_ids"].long()


def attention_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The attention mask of padded token ids: 1 where a real token is, 0 on padding."""
    return (ids != pad_id).long()


def decode_ids(ids: torch.Tensor, tokenizer) -> list[str]:
    """Texts of token-id rows, without padding and the special tokens the tokenizer added.

    ``[UNK]`` is kept (it is a special token too, but dropping it would lose a real input
    token): tokenizing the text again gives back the same ids.
    """
    dropped = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    rows = [[token for token in row if token not in dropped] for row in ids.tolist()]
    # Spaces before punctuation are cleaned up ("it ' s" -> "it's"): easier to read, and the
    # tokenizer splits punctuation again, so the ids do not change.
    return [
        tokenizer.decode(row, skip_special_tokens=False, clean_up_tokenization_spaces=True)
        for row in rows
    ]


def experience_tensors(experience) -> tuple[torch.Tensor, torch.Tensor]:
    """All inputs (N, ...) and targets (N,) of an experience's dataset, in dataset order."""
    dataset = experience.dataset.eval()
    collate = getattr(dataset, "collate_fn", None)
    inputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for batch in DataLoader(dataset, batch_size=1024, shuffle=False, collate_fn=collate):
        x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor):
            raise ContinualError(
                f"experience {experience.current_experience}: inputs must be token-id tensors, "
                f"got {type(x).__name__}; build the benchmark with tasks_to_benchmark"
            )
        inputs.append(x)
        targets.append(torch.as_tensor(y))
    if not inputs:
        raise TaskDataError(f"experience {experience.current_experience} has no examples")
    return torch.cat(inputs), torch.cat(targets).long()


def tasks_to_benchmark(tasks: Sequence[Task], backbone: Backbone, *, task_labels: bool = True):
    """An Avalanche benchmark with one experience per task (see the module docstring for layout).

    Args:
        tasks: the tasks in sequence order; each needs train and test examples.
        backbone: its tokenizer and ``max_length`` make the token ids.
        task_labels: experience i gets task label i; False gives every experience task label 0.

    Returns:
        An Avalanche classification benchmark (``train_stream``, ``test_stream`` and, when every
        task has a validation split, ``valid_stream``), with ``continual_info`` attached.
    """
    tasks = list(tasks)
    if not tasks:
        raise TaskDataError("tasks_to_benchmark needs at least one task")
    names = [task.name for task in tasks]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise TaskDataError(f"task names must be unique; repeated: {duplicated}")
    for task in tasks:
        if not task.test:
            raise TaskDataError(f"task {task.name!r} has no test examples; Avalanche needs them")
    tokenizer = backbone.tokenizer
    pad_id = pad_token_id(tokenizer)
    class_ids: list[list[int]] = []
    label_names: list[str] = []
    for task in tasks:
        class_ids.append(list(range(len(label_names), len(label_names) + len(task.labels))))
        label_names.extend(task.labels)

    def tensors(task: Task, ids: list[int], examples: Sequence[Example]):
        x = encode_texts(tokenizer, [text for text, _ in examples], backbone.max_length)
        y = torch.tensor([ids[task.label_index(label)] for _, label in examples],
                         dtype=torch.long)
        return x, y

    train = [tensors(task, ids, task.train) for task, ids in zip(tasks, class_ids)]
    test = [tensors(task, ids, task.test) for task, ids in zip(tasks, class_ids)]
    other = None
    # Every experience of a stream must have data, so a validation stream only if all have one.
    if all(task.validation for task in tasks):
        other = {"valid": [tensors(task, ids, task.validation)
                           for task, ids in zip(tasks, class_ids)]}
    benchmark = tensors_benchmark(
        train_tensors=train,
        test_tensors=test,
        other_streams_tensors=other,
        task_labels=list(range(len(tasks))) if task_labels else [0] * len(tasks),
    )
    setattr(benchmark, INFO_ATTRIBUTE, BenchmarkInfo(
        task_names=names,
        class_ids=class_ids,
        label_names=label_names,
        pad_id=pad_id,
        max_length=backbone.max_length,
    ))
    return benchmark


def _label_namer(label_names: LabelNames | None, info: BenchmarkInfo | None):
    """class id -> label string: from ``label_names``, else the benchmark's, else str(id)."""
    names = label_names if label_names is not None else (info.label_names if info else None)

    def name(class_id: int) -> str:
        if names is None:
            return str(class_id)
        try:
            return str(names[class_id])
        except (IndexError, KeyError):
            raise TaskDataError(f"no label name given for class id {class_id}") from None

    return name


def _experience_task(
    name: str,
    train_experience,
    tokenizer,
    namer,
    *,
    test_experience=None,
    valid_experience=None,
    order: Sequence[int] | None = None,
) -> tuple[Task, list[int]]:
    """A `Task` from an experience (and its test/validation counterparts) and its class ids.

    The task's labels are its class ids' names, in ``order`` if given, else by class id: the
    head's output k is class ``class_ids[k]``.
    """
    splits: dict[str, list[Example]] = {}
    present: set[int] = set()
    for split, experience in (("train", train_experience), ("test", test_experience),
                              ("validation", valid_experience)):
        if experience is None:
            splits[split] = []
            continue
        ids, targets = experience_tensors(experience)
        texts = decode_ids(ids, tokenizer)
        splits[split] = [(text, namer(int(y))) for text, y in zip(texts, targets.tolist())]
        present.update(targets.tolist())
    class_ids = list(order) if order is not None else sorted(present)
    labels = [namer(class_id) for class_id in class_ids]
    if len(set(labels)) != len(labels):
        raise TaskDataError(f"task {name!r}: two class ids share a label name ({labels})")
    task = Task(name=name, train=splits["train"], test=splits["test"],
                validation=splits["validation"], labels=labels)
    return task, class_ids


def _matching(stream, index: int):
    """Experience ``index`` of ``stream``, or None when there is no such stream or experience."""
    if stream is None:
        return None
    try:
        return stream[index] if index < len(stream) else None
    except (IndexError, TypeError):
        return None


def benchmark_to_tasks(benchmark, tokenizer, label_names: LabelNames | None = None) -> list[Task]:
    """Our tasks from an Avalanche benchmark of token-id inputs: one task per train experience.

    Texts are the decoded ids (so lowercased by an uncased tokenizer, and truncated as the ids
    were). Labels are ``label_names[class_id]`` when given; else the names recorded by
    `tasks_to_benchmark`; else the class ids as strings. Test and validation splits come from
    ``test_stream`` and ``valid_stream`` when the benchmark has them.
    """
    info = benchmark_info(benchmark)
    namer = _label_namer(label_names, info)
    tasks = []
    for index, experience in enumerate(benchmark.train_stream):
        name = info.task_names[index] if info else f"experience_{index}"
        task, _ = _experience_task(
            name,
            experience,
            tokenizer,
            namer,
            test_experience=_matching(getattr(benchmark, "test_stream", None), index),
            valid_experience=_matching(getattr(benchmark, "valid_stream", None), index),
            order=info.class_ids[index] if info else None,
        )
        tasks.append(task)
    return tasks


# ---------------------------------------------------------------------------------------------
# The prompt pool inside Avalanche


class PromptPoolModel(nn.Module):
    """A `PromptPool` as an Avalanche model: token ids (B, n) → logits over global classes.

    Every row is routed by the pool's selector, with no task label, and scored by its routed
    task's prompt and head. The routed task's logits go to that task's global class positions;
    every other class gets `OTHER_TASK_LOGIT`. So argmax is right exactly when the row was routed
    to its own task and labelled right: the pool's accuracy. The last output column means
    "refused" (a selector with ``min_score`` may refuse a row); no target ever points to it.

    The pool is a plain attribute, not a submodule: the model has no parameters of its own and
    Avalanche never moves or optimizes the pool's frozen backbone.
    """

    def __init__(self, pool: PromptPool, pad_id: int) -> None:
        super().__init__()
        self.pool = pool
        self.pad_id = pad_id
        self.class_ids: list[list[int]] = []  # global class ids of each pool entry's head
        self.min_outputs = 0  # outputs needed to cover every class id evaluated so far

    def add_task(self, class_ids: Sequence[int]) -> None:
        """Record the global class ids of the entry just added to the pool."""
        self.class_ids.append([int(c) for c in class_ids])

    @property
    def num_classes(self) -> int:
        """Class outputs (the "refused" column not counted)."""
        known = max((max(ids) + 1 for ids in self.class_ids if ids), default=0)
        return max(known, self.min_outputs)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes + 1) of token ids (B, n); see the class docstring."""
        if len(self.class_ids) != len(self.pool.entries):
            raise ContinualError(
                f"the pool has {len(self.pool.entries)} tasks but class ids are known for "
                f"{len(self.class_ids)}; add tasks through PromptPoolStrategy.train"
            )
        if not self.class_ids:
            raise ContinualError("the pool has no task yet: train on an experience first")
        ids = ids.long().cpu()
        mask = attention_mask(ids, self.pad_id)
        # Drop all-padding columns: the pool pads to the longest text of a batch too.
        keep = mask.bool().any(0)
        ids, mask = ids[:, keep], mask[:, keep]
        states = [entry.selector_state for entry in self.pool.entries]
        routed, _ = self.pool.selector.route(self.pool.backbone.query_ids(ids, mask), states)
        out = torch.full((len(ids), self.num_classes + 1), OTHER_TASK_LOGIT)
        refused = routed == UNKNOWN_TASK
        out[refused, -1] = 0.0
        rows = (~refused).nonzero().squeeze(1)
        if len(rows):
            index = routed[rows]
            local = self.pool.task_logits(index, ids[rows], mask[rows])
            for task in index.unique().tolist():
                chosen = index == task
                columns = torch.tensor(self.class_ids[task])
                out[rows[chosen].unsqueeze(1), columns] = local[chosen][:, : len(columns)]
        return out


class PromptPoolStrategy(SupervisedTemplate):
    """An Avalanche strategy that grows a `PromptPool`: one entry per training experience.

    ``train(experience)`` builds a `Task` from the experience (decoded token ids, labels named
    as in the benchmark, validation from the benchmark's ``valid_stream`` if it has one) and
    calls ``pool.learn`` on it: the prompt and head are exactly what the pool would train on
    that task. Avalanche's SGD loop is skipped (the backbone is frozen and the pool trains its own
    prompt), but ``before_training_exp``/``after_training_exp`` and the other experience-level
    callbacks fire, so plugins and the forgetting/BWT metrics see every experience. Per-epoch
    and per-iteration training callbacks do not fire: there are no Avalanche iterations.

    ``eval(stream)`` is Avalanche's own evaluation loop over `PromptPoolModel`, which routes
    every input with no task label; accuracy is the pool's "routed and right" accuracy.

    Args:
        pool: the pool to grow (its training config, prompt length and selector are used).
        task_names: a name per experience (default: the benchmark's, else ``experience_<i>``).
        label_names: a label name per global class id (default: the benchmark's, else the
            class id as a string).
        class_ids: global class ids of the entries already in ``pool``, one list per entry.
        eval_mb_size: evaluation mini-batch size.
        plugins, evaluator, eval_every: as for any Avalanche strategy.
        seed: passed to ``pool.learn`` for every experience.
        progress: show the pool's training progress bars.

    Example:
        >>> strategy = PromptPoolStrategy(pool=pool, evaluator=EvaluationPlugin(
        ...     accuracy_metrics(experience=True, stream=True), loggers=[TextLogger()]))
        >>> for experience in benchmark.train_stream:
        ...     strategy.train(experience)
        ...     strategy.eval(benchmark.test_stream)
    """

    def __init__(
        self,
        *,
        pool: PromptPool,
        task_names: Sequence[str] | None = None,
        label_names: LabelNames | None = None,
        class_ids: Sequence[Sequence[int]] | None = None,
        eval_mb_size: int = 64,
        plugins: Sequence[SupervisedPlugin] | None = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        if isinstance(pool.selector, OracleSelector):
            raise ContinualError(
                "PromptPoolStrategy routes without task labels; the oracle selector cannot route"
            )
        model = PromptPoolModel(pool, pad_token_id(pool.backbone.tokenizer))
        known = list(class_ids or [])
        if len(known) != len(pool.entries):
            raise ContinualError(
                f"the pool already has {len(pool.entries)} tasks: give class_ids for each "
                f"(got {len(known)})"
            )
        for ids in known:
            model.add_task(ids)
        # Avalanche requires an optimizer; nothing is ever optimized through it (make_optimizer
        # is a no-op), the pool trains its prompts with its own optimizer.
        placeholder = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
        super().__init__(
            model=model,
            optimizer=placeholder,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=pool.training.batch_size,
            train_epochs=pool.training.epochs,
            eval_mb_size=eval_mb_size,
            device="cpu",  # the pool computes on the CPU
            plugins=list(plugins) if plugins else None,
            evaluator=evaluator,
            eval_every=eval_every,
        )
        self.pool = pool
        self.task_names = list(task_names) if task_names is not None else None
        self.label_names = label_names
        self.seed = seed
        self.progress = progress

    @property
    def class_ids(self) -> list[list[int]]:
        """Global class ids of each pool entry's head outputs, in entry order."""
        return [list(ids) for ids in self.model.class_ids]

    def experience_task(self, experience) -> tuple[Task, list[int]]:
        """The `Task` ``train(experience)`` learns, and its labels' global class ids."""
        benchmark = getattr(getattr(experience, "origin_stream", None), "benchmark", None)
        info = benchmark_info(benchmark)
        if info is not None and info.pad_id != self.model.pad_id:
            raise ContinualError(
                f"the benchmark pads with id {info.pad_id} but the pool's tokenizer with "
                f"{self.model.pad_id}: build the benchmark with the pool's backbone"
            )
        index = experience.current_experience
        if self.task_names is not None:
            name = self.task_names[index]
        elif info is not None:
            name = info.task_names[index]
        else:
            name = f"experience_{index}"
        return _experience_task(
            name,
            experience,
            self.pool.backbone.tokenizer,
            _label_namer(self.label_names, info),
            valid_experience=_matching(getattr(benchmark, "valid_stream", None), index),
            order=info.class_ids[index] if info else None,
        )

    # -- Avalanche hooks ---------------------------------------------------------------------
    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        task, class_ids = self.experience_task(experience)
        self.pool.learn(task, seed=self.seed, progress=self.progress)
        self.model.add_task(class_ids)

    def make_optimizer(self, **kwargs) -> None:
        """Nothing to do: the pool's training builds its own optimizer for each new prompt."""

    def forward(self):
        # Never pass task labels: routing them is the pool's job.
        return self.model(self.mb_x)

    def _before_eval_exp(self, **kwargs) -> None:
        # Output columns must cover the experience's classes even before they are learned, so
        # that the "refused" column never coincides with a real class id.
        classes = getattr(self.experience, "classes_in_this_experience", None)
        if classes:
            self.model.min_outputs = max(self.model.min_outputs, max(classes) + 1)
        super()._before_eval_exp(**kwargs)


# ---------------------------------------------------------------------------------------------
# Avalanche baselines behind our Method protocol

STRATEGIES = ("naive", "ewc", "lwf", "replay")


class EncoderClassifier(nn.Module):
    """A trainable encoder, mean-pooled, under Avalanche's `IncrementalClassifier` head.

    Takes right- or left-padded token ids; the attention mask is ``ids != pad_id``.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, pad_id: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id
        # Grows when an experience brings class ids beyond its width; masks never-seen classes.
        self.classifier = IncrementalClassifier(hidden_size, initial_out_features=2)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(ids, self.pad_id)
        keep = mask.bool().any(0)  # drop all-padding columns: less compute, same result
        ids, mask = ids[:, keep], mask[:, keep]
        hidden = self.encoder(
            input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(mask)
        ).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(ids))


class _ProgressBar(SupervisedPlugin):
    """A tqdm bar over one experience's training iterations."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.bar: tqdm | None = None

    def before_training_epoch(self, strategy, **kwargs) -> None:
        # Created at the first epoch: by then plugins (Replay) have replaced the dataloader.
        if self.bar is None:
            try:
                total = strategy.train_epochs * len(strategy.dataloader)
            except TypeError:
                total = None
            self.bar = tqdm(total=total, desc=self.label, unit="step", leave=False)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{float(strategy.loss):.3f}")

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_REISSUED: dict = {}


@contextmanager
def _without_avalanche_deprecations() -> Iterator[None]:
    """Drop the deprecation warnings Avalanche 0.6.0 raises about its own internal calls.

    (Replay's plugin calls a deprecated storage-policy method.) Avalanche's decorator resets the
    warning filters itself, so filtering does not work: warnings are recorded and every other
    one is re-issued.
    """
    with warnings.catch_warnings(record=True) as caught:
        yield
    for warning in caught:
        # Also torch's indexing deprecation, raised from EWC's own parameter bookkeeping.
        internal = issubclass(warning.category, (DeprecationWarning, UserWarning)) and (
            "/avalanche/" in warning.filename.replace("\\", "/")
        )
        if not internal:
            # A registry of our own: each re-issued warning shows once, as by default.
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno, registry=_REISSUED)


class AvalancheMethod:
    """Avalanche's Naive, EWC, LwF or Replay on full fine-tuning, as a benchmark `Method`.

    A deep copy of the backbone's encoder is fine-tuned whole, with mean-pooled features under
    Avalanche's `IncrementalClassifier`. Tasks arrive one at a time through `learn`; each becomes
    a one-experience Avalanche benchmark whose class ids continue from the previous tasks' (the
    global class ids are assigned in arrival order) and whose task label is 0 (class-incremental:
    one head over all classes, no task ids). Evaluation is class-incremental too: argmax over
    every class seen so far must be the input's (task, label) class.

    Args:
        strategy: ``"naive"``, ``"ewc"``, ``"lwf"`` or ``"replay"``.
        backbone: its encoder is copied (the backbone itself stays frozen and untouched).
        epochs, batch_size: training epochs per task and mini-batch size.
        lr, head_lr: AdamW learning rates of the encoder and of the classifier head (two
            parameter groups; Avalanche keeps a grown head in the head's group).
        ewc_lambda: EWC penalty weight ("separate" mode: one Fisher per task). 1000 is a usual
            order of magnitude for Fisher estimates from mean-reduced losses; not tuned here.
        lwf_alpha, lwf_temperature: LwF distillation weight and temperature.
        mem_size: Replay buffer size (examples, balanced over experiences).
        seed: seeds the head, the data order and dropout.
        progress: show a progress bar per task.
        device: where the model trains.
    """

    def __init__(
        self,
        strategy: str,
        backbone: Backbone,
        *,
        epochs: int = 3,
        batch_size: int = 32,
        lr: float = 5e-5,
        head_lr: float = 1e-2,
        ewc_lambda: float = 1000.0,
        lwf_alpha: float = 1.0,
        lwf_temperature: float = 2.0,
        mem_size: int = 200,
        seed: int = 0,
        progress: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ContinualError(
                f"unknown Avalanche strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
            )
        self.name = strategy
        self.backbone = backbone
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        torch.manual_seed(seed)
        encoder = copy.deepcopy(backbone.model)
        for parameter in encoder.parameters():
            parameter.requires_grad_(True)
        self.model = EncoderClassifier(encoder, backbone.hidden_size,
                                       pad_token_id(backbone.tokenizer))
        optimizer = torch.optim.AdamW(
            [
                {"params": list(self.model.encoder.parameters()), "lr": lr},
                {"params": list(self.model.classifier.parameters()), "lr": head_lr},
            ],
            weight_decay=0.0,
        )
        common = dict(
            model=self.model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=batch_size,
            train_epochs=epochs,
            eval_mb_size=64,
            device=self.device,
            plugins=[_ProgressBar(f"{strategy}")] if progress else None,
            evaluator=None,  # metrics come from evaluate(); no Avalanche logging
        )
        with warnings.catch_warnings():
            # Logging nothing is deliberate here: evaluate() computes the benchmark's numbers.
            warnings.filterwarnings("ignore", message="No loggers specified")
            if strategy == "naive":
                self.strategy = Naive(**common)
            elif strategy == "ewc":
                self.strategy = EWC(ewc_lambda=ewc_lambda, mode="separate", **common)
            elif strategy == "lwf":
                self.strategy = LwF(alpha=lwf_alpha, temperature=lwf_temperature, **common)
            else:
                self.strategy = Replay(mem_size=mem_size, **common)
        self.classes: list[tuple[str, str]] = []  # (task, label) of each global class id
        self._offsets: dict[str, int] = {}  # task name -> its first global class id

    def _tensors(self, task: Task, examples: Sequence[Example]) -> tuple[torch.Tensor, ...]:
        offset = self._offsets[task.name]
        ids = encode_texts(self.backbone.tokenizer, [text for text, _ in examples],
                           self.backbone.max_length)
        targets = torch.tensor([offset + task.label_index(label) for _, label in examples],
                               dtype=torch.long)
        return ids, targets

    def learn(self, task: Task) -> None:
        """Fine-tune on ``task`` (only its training data) with the Avalanche strategy."""
        if task.name in self._offsets:
            raise TaskDataError(f"task {task.name!r} was already learned")
        self._offsets[task.name] = len(self.classes)
        self.classes += [(task.name, label) for label in task.labels]
        train = self._tensors(task, task.train)
        # Avalanche benchmarks need a test stream; it is never used (evaluate() has its own loop).
        benchmark = tensors_benchmark(train_tensors=[train], test_tensors=[train],
                                      task_labels=[0])
        # Re-seeded per task: the data order and dropout do not depend on what ran before.
        torch.manual_seed(self.seed + len(self._offsets))
        if self.strategy.plugins:
            for plugin in self.strategy.plugins:
                if isinstance(plugin, _ProgressBar):
                    plugin.label = f"{self.name} {task.name}"
        with _without_avalanche_deprecations():
            self.strategy.train(benchmark.train_stream[0], eval_streams=[])

    @torch.no_grad()
    def evaluate(self, task: Task) -> tuple[float, None]:
        """Class-incremental accuracy (%) on ``task``'s test split; 0 for a task not learned."""
        if not task.test:
            raise TaskDataError(f"task {task.name!r}: no test examples")
        if task.name not in self._offsets:
            return 0.0, None  # its classes have no outputs yet: nothing can be right
        ids, targets = self._tensors(task, task.test)
        self.model.eval()
        correct = 0
        for start in range(0, len(ids), 64):
            logits = self.model(ids[start : start + 64].to(self.device))
            correct += int((logits.argmax(1).cpu() == targets[start : start + 64]).sum())
        return 100.0 * correct / len(ids), None

    def cost(self) -> dict:
        """Trainable parameters, and bytes stored per task.

        As for the fine-tuning baselines, the whole fine-tuned model is stored after every task
        (4 bytes per parameter); EWC also keeps one Fisher estimate and one copy of the
        parameters per task. Replay's fixed-size buffer and LwF's one teacher copy do not grow
        with the number of tasks and are not counted.
        """
        trainable = sum(p.numel() for p in self.model.parameters())
        per_task = 4 * trainable
        if self.name == "ewc":
            per_task += 2 * 4 * trainable
        return {"trainable_parameters": trainable, "bytes_per_task": float(per_task)}

