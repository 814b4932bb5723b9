"""The pool's format shared by the pool in memory and the verbs on a pool folder: which
backbone-fingerprint fields must agree, and the entry an exported task file makes.

Both `continual.pool` and `continual.manage` use it, so neither imports the other.
"""

from __future__ import annotations

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
    if name is None:
        name = info["name"]
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise TaskDataError(f"task name {name!r} must be non-empty, without surrounding spaces")
    if name in tasks:
        raise TaskDataError(
            f"{path}: task {name!r} is already in the pool; import it under "
            "another name (--as NAME)"
        )
    return TaskEntry.from_tensors(
        name, list(info["labels"]), tensors, dict(info["stats"]), info["generation"]
    )
