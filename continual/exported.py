"""One task as one self-describing safetensors file (``continual export`` / ``import``): its
tensors, and string metadata naming the task, its labels, stats, selector config, backbone
fingerprint and generation settings. Reading checks every field and unpickles nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import files
from .data import Generation
from .errors import PoolFormatError
from .storage import (
    check_labels,
    pool_folder_of,
    read_generation,
    required_tensors,
    stored_dtypes,
)

TASK_FORMAT = "continual-task"
TASK_FORMAT_VERSION = "1"
_BACKBONE_KEYS = (
    "name",
    "model_type",
    "hidden_size",
    "num_layers",
    "vocab_size",
    "weights_sha256",
    "max_length",
    "query_layer",
)


def write_export_file(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    *,
    name: str,
    labels: list[str],
    stats: dict,
    selector: dict,
    backbone: dict,
    generation: Generation | None = None,
    force: bool = False,
) -> Path:
    """Write one task as a single safetensors file whose string metadata describes it.

    The tensors are the task's prompt, head (label tasks) and ``selector.*`` state; the
    metadata holds its name, labels, stats, the selector's config, the backbone fingerprint
    and a text-to-text task's ``generation`` settings, so the file can be checked against any
    pool before it joins it. ``path`` must be a new file outside any pool (with ``force``, an
    existing regular file, replaced atomically): see `files.write_new_file`.
    """
    metadata = {
        "format": TASK_FORMAT,
        "format_version": TASK_FORMAT_VERSION,
        "name": name,
        "labels": json.dumps(list(labels)),
        "stats": json.dumps(stats),
        "selector": str(selector.get("name")),
        "selector_config": json.dumps(selector),
        "backbone": json.dumps(backbone),
    }
    if generation is not None:
        metadata["generation"] = json.dumps(generation.to_dict())
    data = save_safetensors(
        {key: value.contiguous() for key, value in tensors.items()}, metadata=metadata
    )
    return files.write_new_file(path, data, pool_folder_of=pool_folder_of, force=force)


def read_export_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and checked metadata of a file written by `write_export_file`.

    Returns ``(tensors, info)`` where ``info`` has ``name`` (str), ``labels`` (list of str),
    ``stats`` (dict), ``selector`` (str), ``selector_config`` (dict), ``backbone`` (dict) and
    ``generation`` (`Generation`, None for a label task).
    Every field and tensor is validated; errors name the file. Nothing is unpickled.
    """
    path = Path(path)
    data = files.read_regular_file(
        path, limit=files.MAX_TASK_FILE_BYTES, error=PoolFormatError, what="task file"
    )
    metadata = _safetensors_metadata(path, data)
    if metadata.get("format") != TASK_FORMAT:
        raise PoolFormatError(
            f"{path}: not an exported continual task (metadata 'format' is "
            f"{metadata.get('format')!r}); make one with 'continual export'"
        )
    if metadata.get("format_version") != TASK_FORMAT_VERSION:
        raise PoolFormatError(
            f"{path}: task format_version {metadata.get('format_version')!r} "
            f"is not supported (this version reads {TASK_FORMAT_VERSION})"
        )
    info: dict = {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise PoolFormatError(f"{path}: metadata 'name' is missing, empty or padded with spaces")
    info["name"] = name
    for field, kind in (
        ("labels", list),
        ("stats", dict),
        ("selector_config", dict),
        ("backbone", dict),
    ):
        raw = metadata.get(field)
        if not isinstance(raw, str):
            raise PoolFormatError(f"{path}: metadata {field!r} is missing")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise PoolFormatError(f"{path}: metadata {field!r} is not valid JSON") from None
        if not isinstance(value, kind):
            raise PoolFormatError(f"{path}: metadata {field!r} is not a JSON {kind.__name__}")
        info[field] = value
    raw = metadata.get("generation")
    try:
        settings = None if raw is None else json.loads(raw)
    except (ValueError, RecursionError):
        raise PoolFormatError(f"{path}: metadata 'generation' is not valid JSON") from None
    generation = info["generation"] = read_generation(settings, f"{path}: metadata")
    labels = check_labels(info["labels"], generation, f"{path}: metadata")
    selector = metadata.get("selector")
    if not isinstance(selector, str) or selector != info["selector_config"].get("name"):
        raise PoolFormatError(
            f"{path}: metadata 'selector' {selector!r} does not match "
            f"'selector_config' {info['selector_config'].get('name')!r}"
        )
    info["selector"] = selector
    backbone = info["backbone"]
    for key in _BACKBONE_KEYS:
        if key not in backbone:
            raise PoolFormatError(f"{path}: metadata 'backbone' lacks {key!r}")
    hidden = backbone["hidden_size"]
    if type(hidden) is not int or hidden < 1:
        raise PoolFormatError(f"{path}: metadata 'backbone' has a bad hidden_size {hidden!r}")
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise PoolFormatError(f"{path}: not a valid safetensors file ({error})") from None
    needed = required_tensors(generation)
    missing = needed - set(tensors)
    if missing:
        raise PoolFormatError(f"{path}: missing tensors {sorted(missing)}")
    for key, tensor in tensors.items():
        if key not in needed and not key.startswith("selector."):
            raise PoolFormatError(f"{path}: unexpected tensor {key!r}")
        if tensor.dtype not in stored_dtypes(key):
            allowed = " or ".join(str(dtype) for dtype in stored_dtypes(key))
            raise PoolFormatError(f"{path}: tensor {key!r} is {tensor.dtype}, expected {allowed}")
    prompt = tensors["prompt"]
    if prompt.dim() not in (2, 3) or min(prompt.shape) < 1 or prompt.shape[-1] != hidden:
        raise PoolFormatError(
            f"{path}: prompt shape {tuple(prompt.shape)} is not (length, {hidden}) "
            f"or (layers, length, {hidden})"
        )
    if generation is not None:
        return tensors, info
    weight, bias = tensors["head.weight"], tensors["head.bias"]
    if tuple(weight.shape) != (len(labels), hidden) or tuple(bias.shape) != (len(labels),):
        raise PoolFormatError(
            f"{path}: head shapes {tuple(weight.shape)}, {tuple(bias.shape)} "
            f"do not fit {len(labels)} labels of width {hidden}"
        )
    return tensors, info


def _safetensors_metadata(path: Path, data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (8-byte length, then JSON)."""
    if len(data) < 8:
        raise PoolFormatError(f"{path}: not a valid safetensors file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise PoolFormatError(f"{path}: not a valid safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PoolFormatError(f"{path}: not a valid safetensors file (bad header)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise PoolFormatError(
            f"{path}: not an exported continual task (no string metadata); "
            "make one with 'continual export'"
        )
    return metadata
