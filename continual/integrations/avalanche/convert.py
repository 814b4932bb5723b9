"""Conversion between `continual` tasks and Avalanche (``avalanche-lib`` 0.6.0) benchmarks.

`tasks_to_benchmark` turns a sequence of our `Task` objects into an Avalanche benchmark with one
experience per task; `benchmark_to_tasks` goes back.

Data layout of a benchmark built here:

* inputs ``x``: token ids, a ``LongTensor`` (N, max_length) padded on the right to
  ``backbone.max_length`` with the tokenizer's pad id. No attention mask is stored: it is
  ``ids != pad_id`` (`attention_mask`). Keeping ``x`` a plain tensor means Avalanche's default
  collation, ``_unpack_minibatch`` and every plugin that reads ``strategy.mb_x`` work as is.
* targets ``y``: global class ids over the union of all tasks' labels in sequence order: task 0's
  labels (in ``task.labels`` order) are 0..C0-1, task 1's come next, and so on.
* task labels: experience i has task label i (or 0 for all with ``task_labels=False``, the
  usual class-incremental setting).
* streams: ``train_stream`` and ``test_stream``, plus ``valid_stream`` when every task has a
  validation split.
* ``benchmark.continual_info``: a `BenchmarkInfo` with the task names, label names and pad id,
  so that `benchmark_to_tasks` and `PromptPoolStrategy` can name tasks and labels as they were.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

# Importing Avalanche warns that no QP solver is installed (only its GEM strategy needs one).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
    from avalanche.benchmarks import tensors_benchmark
from torch.utils.data import DataLoader

from ...backbone import Backbone
from ...data import Example, Task
from ...errors import ContinualError, TaskDataError

INFO_ATTRIBUTE = "continual_info"

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


def token_ids(inputs: object, backbone: Backbone) -> torch.Tensor:
    """A batch's inputs as token ids (B, n): ids as they are; texts tokenized (and padded to
    ``backbone.max_length``) with the backbone's tokenizer; a dict's ``input_ids``. Anything
    else is a `TaskDataError` saying what inputs work."""
    if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point() and inputs.dim() == 2:
        return inputs.long()
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        return encode_texts(backbone.tokenizer, list(inputs), backbone.max_length)
    if isinstance(inputs, Mapping) and isinstance(inputs.get("input_ids"), torch.Tensor):
        return token_ids(inputs["input_ids"], backbone)
    shape = f" of shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else ""
    raise TaskDataError(
        f"inputs must be token ids (an integer tensor (B, n), as tasks_to_benchmark makes), "
        f"texts, or a dict with 'input_ids'; got {type(inputs).__name__}{shape}"
    )


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
        y = torch.tensor([ids[task.label_index(label)] for _, label in examples], dtype=torch.long)
        return x, y

    train = [tensors(task, ids, task.train) for task, ids in zip(tasks, class_ids)]
    test = [tensors(task, ids, task.test) for task, ids in zip(tasks, class_ids)]
    other = None
    # Every experience of a stream must have data, so a validation stream only if all have one.
    if all(task.validation for task in tasks):
        other = {
            "valid": [tensors(task, ids, task.validation) for task, ids in zip(tasks, class_ids)]
        }
    benchmark = tensors_benchmark(
        train_tensors=train,
        test_tensors=test,
        other_streams_tensors=other,
        task_labels=list(range(len(tasks))) if task_labels else [0] * len(tasks),
    )
    setattr(
        benchmark,
        INFO_ATTRIBUTE,
        BenchmarkInfo(
            task_names=names,
            class_ids=class_ids,
            label_names=label_names,
            pad_id=pad_id,
            max_length=backbone.max_length,
        ),
    )
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
    for split, experience in (
        ("train", train_experience),
        ("test", test_experience),
        ("validation", valid_experience),
    ):
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
    task = Task(
        name=name,
        train=splits["train"],
        test=splits["test"],
        validation=splits["validation"],
        labels=labels,
    )
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


def experience_task_labels(experience) -> list[int]:
    """The task labels of an experience (``[0]`` for a dataset without task labels)."""
    labels = getattr(experience, "task_labels", None)
    if labels is None:
        attribute = getattr(experience.dataset, "targets_task_labels", None)
        uniques = getattr(attribute, "uniques", None)
        labels = uniques if uniques is not None else [0]
    return sorted(int(t) for t in labels)
