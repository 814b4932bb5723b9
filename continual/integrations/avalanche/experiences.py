"""Reading Avalanche experiences for `PromptPoolStrategy`: inputs as token ids, targets as
class ids, the benchmark an experience came from, and the seeded batches it trains in."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...backbone import Backbone
from ...classifier import ClassifierBatch, ClassifierSteps
from ...errors import TaskDataError
from .convert import decode_ids, token_ids
from .model import PromptPoolModel


class ClassIds:
    """Class ids of a batch's targets: ints and one-element tensors as they are; a label name
    (a string) gets the next free class id the first time it is seen.

    ``taken()`` gives the class ids already in use (the pool's entries', the candidate's).
    """

    def __init__(self, taken: Callable[[], Iterable[int]]) -> None:
        self.taken = taken
        self.of_name: dict[str, int] = {}

    def __call__(self, targets: Any) -> torch.Tensor:
        """Class ids (B,) of ``targets`` (a tensor, or a sequence of ids or names)."""
        if isinstance(targets, torch.Tensor):
            return targets.long().reshape(-1)
        ids = []
        for target in targets:
            if isinstance(target, str):
                if target not in self.of_name:
                    used = [*self.taken(), *self.of_name.values()]
                    self.of_name[target] = max(used, default=-1) + 1
                ids.append(self.of_name[target])
            elif isinstance(target, torch.Tensor) and target.numel() == 1:
                ids.append(int(target))
            elif isinstance(target, int) and not isinstance(target, bool):
                ids.append(target)
            else:
                raise TaskDataError(
                    f"PromptPoolStrategy: a target must be a class id or a label name, got "
                    f"{type(target).__name__} {target!r:.80}"
                )
        return torch.tensor(ids, dtype=torch.long)

    def name(self, class_id: int) -> str | None:
        """The label name that was given class id ``class_id``, if one was."""
        return next((name for name, number in self.of_name.items() if number == class_id), None)


def _batches(experience, batch_size: int) -> Iterator:
    dataset = experience.dataset.eval()
    collate = getattr(dataset, "collate_fn", None)
    return iter(DataLoader(dataset, batch_size=batch_size, collate_fn=collate))


def experience_rows(experience, backbone: Backbone, batch_size: int) -> list[torch.Tensor]:
    """An experience's inputs as token-id rows, in dataset order."""
    rows: list[torch.Tensor] = []
    for batch in _batches(experience, batch_size):
        rows += list(token_ids(batch[0], backbone))
    return rows


def experience_examples(
    experience, backbone: Backbone, class_ids: ClassIds, batch_size: int
) -> tuple[list[str], list[int]]:
    """An experience's texts (decoded from its ids) and class ids, in dataset order."""
    texts: list[str] = []
    targets: list[int] = []
    for batch in _batches(experience, batch_size):
        texts += decode_ids(token_ids(batch[0], backbone), backbone.tokenizer)
        targets += class_ids(batch[1]).tolist()
    if not texts:
        raise TaskDataError(f"experience {experience.current_experience} has no examples")
    return texts, targets


def experience_class_ids(
    experience, backbone: Backbone, class_ids: ClassIds, batch_size: int
) -> list[int]:
    """The sorted class ids of an experience: from its dataset's ``targets`` where Avalanche
    keeps them, else read from the data."""
    uniques = getattr(getattr(experience.dataset, "targets", None), "uniques", None)
    if uniques is not None:
        return sorted(set(class_ids(list(uniques)).tolist()))
    return sorted(set(experience_examples(experience, backbone, class_ids, batch_size)[1]))


def find_benchmark(experience) -> object:
    """The benchmark an experience's stream belongs to, or None.

    Streams of Avalanche's generic benchmarks (``benchmark_from_datasets``) do not know their
    benchmark (``stream.benchmark`` is None); it is then found among the objects that refer to
    the stream: a benchmark keeps each stream in its attributes as ``<name>_stream``.
    """
    stream = getattr(experience, "origin_stream", None)
    linked = getattr(stream, "benchmark", None)
    if linked is not None or stream is None:
        return linked
    for referrer in gc.get_referrers(stream):
        if (
            isinstance(referrer, dict)
            and referrer.get(f"{getattr(stream, 'name', '')}_stream") is stream
        ):
            for owner in gc.get_referrers(referrer):
                if getattr(owner, "__dict__", None) is referrer and hasattr(owner, "streams"):
                    return owner
    return None


def task_name(names: Sequence[str] | None, info: Any, index: int) -> str:
    """Experience ``index``'s task name: from ``names``, else the benchmark's, else
    ``experience_<index>``."""
    if names is not None:
        return names[index]
    if info is not None and index < len(info.task_names):
        return info.task_names[index]
    return f"experience_{index}"


def find_validation(stream, benchmark, eval_streams: Sequence, index: int):
    """Experience ``index`` of the validation stream: ``stream`` if given, else the
    benchmark's ``valid_stream``, else an ``eval_streams`` stream named ``valid*``; None
    without one."""
    if stream is None:
        stream = getattr(benchmark, "valid_stream", None)
    if stream is None:
        named = (s for s in eval_streams if str(getattr(s, "name", "")).startswith("valid"))
        stream = next(named, None)
    if stream is None:
        return None
    experiences = list(stream)
    for experience in experiences:
        if experience.current_experience == index:
            return experience
    return experiences[index] if index < len(experiences) else None


class TokenSteps(ClassifierSteps):
    """`ClassifierSteps` on examples of (token-id row, class index): Avalanche's inputs."""

    def __init__(self, backbone, module, labels, batch_size, model: PromptPoolModel) -> None:
        super().__init__(backbone, module, labels, batch_size)
        self.model = model

    def batch(self, examples: Sequence[Any]) -> ClassifierBatch:
        ids, mask = self.model.trimmed(torch.stack([row for row, _ in examples]))
        targets = torch.tensor([target for _, target in examples], device=ids.device)
        return ClassifierBatch(ids, mask, targets)


class SeededBatches:
    """Batches of row indices in the order ``order(size)`` draws afresh at each pass (a
    ``batch_sampler``: each epoch of Avalanche's loop gets the trainer's next order)."""

    def __init__(self, size: int, batch_size: int, order: Callable[[int], torch.Tensor]) -> None:
        self.size, self.batch_size, self.order = size, batch_size, order

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.size).tolist()
        for first in range(0, self.size, self.batch_size):
            yield order[first : first + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s weights."""
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def same_weights(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
