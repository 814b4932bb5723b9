"""The pool's format shared by the pool in memory and the verbs on a pool folder: which
backbone-fingerprint fields must agree, what a task name may be, and the entry an exported task
file makes.

Both `continual.pool` and `continual.manage` use it, so neither imports the other.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch

from .entry import TaskEntry
from .errors import PoolFormatError, TaskDataError
from .selector import Selector

# Fingerprint fields that identify the backbone's weights and the features the selector used.
IDENTITY = ("model_type", "hidden_size", "num_layers", "vocab_size", "weights_sha256")
FEATURES = ("max_length", "query_layer")
# Recorded since backbones other than BERT-style encoders: checked when the manifest has them
# (older pools were all mean-pooled encoders without a GGUF file). dtype first: the weights'
# hash depends on it, and "load it in bfloat16" says more than "the weights differ".
RECORDED = ("architecture", "gguf_sha256")
RECORDED_FEATURES = ("dtype", "pooling")


# A task name: valid UTF-8 without control characters or line breaks, at most this long.
MAX_TASK_NAME = 200
# Error lines quote a name cut to this many characters, and list at most this many names.
_QUOTED_NAME = 80
_LISTED_NAMES = 5


def quote_name(name: object) -> str:
    """``name`` quoted for an error line: escaped, and cut to 80 characters."""
    if isinstance(name, str) and len(name) > _QUOTED_NAME:
        return f"{name[:_QUOTED_NAME]!r}… ({len(name)} characters)"
    return repr(name)


def some_names(names: Sequence[object]) -> str:
    """``names`` for an error line: at most the first five, each cut, and how many more."""
    shown = ", ".join(quote_name(name) for name in names[:_LISTED_NAMES])
    if len(names) > _LISTED_NAMES:
        shown += f", … ({len(names) - _LISTED_NAMES} more)"
    return shown


def pool_has(tasks: Sequence[object]) -> str:
    """The pool's tasks for an error line: the count and at most five names, never all."""
    return (
        f"the pool has {len(tasks)} task(s): {some_names(tasks)}"
        if tasks
        else "the pool has no task"
    )


def check_task_name(name: object, what: str = "task name") -> str:
    """``name`` if it may name a task, else `TaskDataError` saying why (the name cut to 80).

    A task name is a non-empty string without surrounding spaces, valid UTF-8 (a name the shell
    passed as undecodable bytes is refused), without control characters or line breaks, and at
    most 200 characters: it is printed, sent as JSON and typed back to ``remove``.
    """
    if not isinstance(name, str):
        raise TaskDataError(f"{what} must be a string, got {type(name).__name__}")
    if not name.strip() or name != name.strip():
        raise TaskDataError(
            f"{what} {quote_name(name)} must be non-empty, without surrounding spaces"
        )
    if len(name) > MAX_TASK_NAME:
        raise TaskDataError(f"{what} {quote_name(name)} is too long: at most {MAX_TASK_NAME}")
    for position, character in enumerate(name):
        if 0xD800 <= ord(character) <= 0xDFFF:
            raise TaskDataError(
                f"{what} {quote_name(name)} is not valid UTF-8 (at character {position})"
            )
        if unicodedata.category(character) in ("Cc", "Zl", "Zp"):
            raise TaskDataError(f"{what} {quote_name(name)} has a control character at {position}")
    return name


def entry_from_export(
    path: Path,
    tensors: dict[str, torch.Tensor],
    info: dict,
    *,
    name: str | None,
    backbone: dict,
    prompt_shape: tuple[int, ...],
    selector: Selector,
    tasks: list[str],
) -> TaskEntry:
    """The entry an exported task makes in a pool, or an error naming ``path`` saying why not.

    ``backbone`` is the pool's backbone fingerprint, ``tasks`` the names it already holds.
    """
    saved = info["backbone"]
    # Fields recorded since other backbone families (pooling, precision, architecture, GGUF
    # digest) count where both sides record them, as `PromptPool.load` checks them.
    recorded = [key for key in RECORDED + RECORDED_FEATURES if key in saved and key in backbone]
    for key in IDENTITY + FEATURES + tuple(recorded):
        if saved.get(key) != backbone.get(key):
            raise PoolFormatError(
                f"{path}: the task was exported from backbone {saved.get('name')!r} and the pool "
                f"is on {backbone.get('name')!r} ({key} differs: {saved.get(key)!r} vs "
                f"{backbone.get(key)!r}); a task only works on the backbone it was trained on"
            )
    hidden = backbone["hidden_size"]
    if tuple(tensors["prompt"].shape) != tuple(prompt_shape):
        raise PoolFormatError(
            f"{path}: prompt shape {tuple(tensors['prompt'].shape)}, the pool "
            f"needs {tuple(prompt_shape)} (a prompt at another length or placement)"
        )
    if info["selector"] != selector.name:
        raise PoolFormatError(
            f"{path}: the task's selector state is for the {info['selector']!r} "
            f"selector and the pool routes with {selector.name!r}"
        )
    state = {
        key.removeprefix("selector."): value
        for key, value in tensors.items()
        if key.startswith("selector.")
    }
    problem = selector.check_state(state, hidden)
    if problem:
        raise PoolFormatError(f"{path}: {problem}")
    name = check_task_name(info["name"] if name is None else name)
    if name in tasks:
        raise TaskDataError(
            f"{path}: task {quote_name(name)} is already in the pool; import it under "
            "another name (--as NAME)"
        )
    return TaskEntry.from_tensors(
        name, list(info["labels"]), tensors, dict(info["stats"]), info["generation"]
    )
