"""The pool's format shared by the pool in memory and the verbs on a pool folder: what a
manifest records (`PoolConfig`, written and read here alone), which backbone-fingerprint fields
must agree (`fingerprint_mismatch`), what a task name may be, and the entry an exported task
file makes.

Both `continual.pool` and `continual.manage` use it, so neither imports the other.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .backbone import DEFAULT_MODEL_NAME, Backbone
from .entry import TaskEntry
from .errors import ContinualError, PoolFormatError, TaskDataError
from .placement import PLACEMENTS, Placement
from .selector import Selector

# Fingerprint fields that identify the backbone's weights and the features the selector used.
IDENTITY = ("model_type", "hidden_size", "num_layers", "vocab_size", "weights_sha256")
FEATURES = ("max_length", "query_layer")
# Recorded since backbones other than BERT-style encoders: checked when the manifest has them
# (older pools were all mean-pooled encoders without a GGUF file). dtype first: the weights'
# hash depends on it, and "load it in bfloat16" says more than "the weights differ".
RECORDED = ("architecture", "gguf_sha256")
RECORDED_FEATURES = ("dtype", "pooling")

# A hub model name a manifest may name for automatic loading: "org/name", nothing path-like.
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")

FORMAT = "continual-pool"
FORMAT_VERSION = 1


def fingerprint_mismatch(saved: dict, current: dict) -> str | None:
    """The first field in which a recorded backbone fingerprint and another differ, or None.

    Fields recorded since other backbone families (precision, pooling, architecture, GGUF
    digest) count where both record them; precision first, as the weights' hash depends on it.
    """
    for key in RECORDED_FEATURES + IDENTITY + RECORDED + FEATURES:
        if key in RECORDED + RECORDED_FEATURES and not (key in saved and key in current):
            continue
        if saved.get(key) != current.get(key):
            return key
    return None


def is_setting(key: str) -> bool:
    """Whether a fingerprint field is a loading option (``Backbone.load(..., key=)``), not the
    weights' identity."""
    return key in FEATURES + RECORDED_FEATURES


@dataclass(frozen=True)
class PoolConfig:
    """What a pool's manifest records besides its tasks; `to_manifest` writes it and
    `from_manifest` reads and checks it, naming the manifest and the field that is wrong.

    Attributes:
        backbone: the backbone's fingerprint (`Backbone.fingerprint`).
        hidden_size: the backbone's width.
        prompt_length: soft prompt vectors per task.
        placement: ``"input"`` or ``"query_layer"`` (older pools: input).
        selector: the selector's config (`Selector.config`).
        training: the pool's `TrainingConfig` as a dict (checked by `TrainingConfig`).
    """

    backbone: dict[str, Any]
    hidden_size: int
    prompt_length: int
    placement: str
    selector: dict[str, Any]
    training: Any

    def to_manifest(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The manifest naming ``records`` (one per task file)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": self.backbone,
            "hidden_size": self.hidden_size,
            "prompt_length": self.prompt_length,
            "placement": self.placement,
            "selector": self.selector,
            "training": self.training,
            "tasks": records,
        }

    def settings(self) -> dict[str, Any]:
        """The manifest without its tasks, as JSON reads it back."""
        return json.loads(json.dumps(self.to_manifest([])))

    @classmethod
    def from_manifest(cls, manifest: object, where: Path) -> PoolConfig:
        """The config a manifest records, or a `PoolFormatError` naming ``where`` and the field."""
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise PoolFormatError(f"{where}: not a continual pool manifest (field 'format')")
        version = manifest.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise PoolFormatError(
                f"{where}: format_version {version!r} is not supported (this version reads "
                f"{FORMAT_VERSION}); use the continual release that wrote it"
            )
        for field, kind in (
            ("backbone", dict),
            ("tasks", list),
            ("prompt_length", int),
            ("hidden_size", int),
            ("selector", dict),
        ):
            if not isinstance(manifest.get(field), kind):
                raise PoolFormatError(
                    f"{where}: field {field!r} is missing or not a {kind.__name__}"
                )
        placement = manifest.get("placement", "input")  # older pools: prompts at the input
        if placement not in PLACEMENTS:
            raise PoolFormatError(
                f"{where}: field 'placement' must be 'input' or 'query_layer', got {placement!r}"
            )
        _check_fingerprint(manifest["backbone"], where, deep=Placement(placement).deep)
        return cls(
            backbone=manifest["backbone"],
            hidden_size=manifest["hidden_size"],
            prompt_length=manifest["prompt_length"],
            placement=placement,
            selector=manifest["selector"],
            training=manifest.get("training", {}),
        )

    def prompt_shape(self) -> tuple[int, ...]:
        """One task's prompt as this pool holds it (see `Placement.prompt_shape`)."""
        return Placement(self.placement).prompt_shape(
            self.prompt_length,
            hidden=self.hidden_size,
            # a deep pool's are checked by from_manifest; an input prompt's shape needs neither
            num_layers=int(self.backbone.get("num_layers") or 0),
            query_layer=int(self.backbone.get("query_layer") or 0),
        )


def _check_fingerprint(fingerprint: dict, where: Path, *, deep: bool) -> None:
    """Each backbone field the manifest holds has the right type and range (a missing one is
    reported by the comparison with the backbone; a deep pool needs its layer counts)."""

    def bad(key: str, expected: str) -> PoolFormatError:
        return PoolFormatError(
            f"{where}: field 'backbone.{key}' must be {expected}, got {fingerprint.get(key)!r}"
        )

    for key in ("name", "model_type"):
        if key in fingerprint and (
            not isinstance(fingerprint[key], str) or not fingerprint[key].strip()
        ):
            raise bad(key, "a non-empty string")
    for key in ("hidden_size", "num_layers", "vocab_size", "max_length"):
        if key in fingerprint and (type(fingerprint[key]) is not int or fingerprint[key] < 1):
            raise bad(key, "a positive integer")
    if (
        "query_layer" in fingerprint
        and fingerprint["query_layer"] is not None
        and (type(fingerprint["query_layer"]) is not int or fingerprint["query_layer"] < 1)
    ):
        raise bad("query_layer", "a positive integer or null")
    if deep:
        for key in ("num_layers", "query_layer"):
            value = fingerprint.get(key)
            if type(value) is not int or value < 1:
                raise PoolFormatError(
                    f"{where}: field 'backbone.{key}' must be a positive integer for a pool "
                    f"whose prompts sit at the query layer, got {value!r}"
                )
    if "weights_sha256" in fingerprint and not (
        isinstance(fingerprint["weights_sha256"], str)
        and re.fullmatch(r"[0-9a-f]{64}", fingerprint["weights_sha256"])
    ):
        raise bad("weights_sha256", "64 lowercase hex digits")


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
    key = fingerprint_mismatch(saved, backbone)
    if key is not None:
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


def load_backbone(
    fingerprint: dict,
    where: Path,
    given: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
) -> Backbone:
    """The backbone a manifest's ``fingerprint`` names, with its recorded options, or
    ``given`` (a name or folder) with them; a local model only when ``given``."""
    name = fingerprint.get("name")
    options: dict[str, Any] = {
        "max_length": fingerprint.get("max_length", 128),
        "query_layer": fingerprint.get("query_layer"),
        "device": device,
        "dtype": dtype or fingerprint.get("dtype", "float32"),
        "pooling": fingerprint.get("pooling"),
    }
    if given is not None:
        load: str | os.PathLike | None = given
    elif name == DEFAULT_MODEL_NAME:
        load = None  # the packaged copy, offline
    elif (
        isinstance(name, str)
        and _HUB_NAME.fullmatch(name)
        and ".." not in name
        and not os.path.lexists(name)
    ):
        load = name
    else:
        raise PoolFormatError(
            f"{where}: the pool was built on backbone {name!r}, which is not the packaged "
            "default nor a hub name 'org/name'; a pool does not load a local model by itself: "
            "give the backbone (continual ... --backbone PATH, or PromptPool.load(path, "
            "backbone=PATH))"
        )
    try:
        return Backbone.load(load, **options)
    except ContinualError as error:
        shown = name if given is None else os.fspath(given)
        raise PoolFormatError(
            f"{where}: cannot load the pool's backbone {shown!r}: {error}"
        ) from None


def check_entry(
    entry: TaskEntry,
    prompt_shape: tuple[int, ...],
    hidden: int,
    selector: Selector,
    placement: Placement,
) -> None:
    """A `PoolFormatError` naming ``entry``'s task where it does not fit a pool of these
    shapes, selector and placement."""
    if tuple(entry.prompt.shape) != prompt_shape:
        raise PoolFormatError(
            f"task {entry.name!r}: prompt shape {tuple(entry.prompt.shape)}, expected "
            f"{prompt_shape} (placement {placement!r})"
        )
    if tuple(entry.head_weight.shape) != (len(entry.labels), hidden) or tuple(
        entry.head_bias.shape
    ) != (len(entry.labels),):
        raise PoolFormatError(
            f"task {entry.name!r}: head shape {tuple(entry.head_weight.shape)} does not fit "
            f"{len(entry.labels)} labels of width {hidden}"
        )
    problem = selector.check_state(entry.selector_state, hidden)
    if problem:
        raise PoolFormatError(f"task {entry.name!r}: {problem}")
    if entry.generation is not None:
        try:
            placement.check_input(f"task {entry.name!r} is text-to-text: it")
        except ContinualError as error:
            raise PoolFormatError(str(error)) from None
    if len(set(entry.labels)) != len(entry.labels):
        raise PoolFormatError(f"task {entry.name!r}: duplicate labels {entry.labels}")


def check_prompt_length(prompt_length: object, backbone: Backbone) -> None:
    """A `ContinualError` unless ``prompt_length`` is a positive integer that fits, with the
    backbone's ``max_length``, in its positions."""
    if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 1:
        raise ContinualError(f"prompt_length must be a positive integer, got {prompt_length!r}")
    limit = backbone.position_limit
    if limit is not None and prompt_length + backbone.max_length > limit:
        raise ContinualError(
            f"prompt_length {prompt_length} + max_length {backbone.max_length} exceeds the "
            f"model's {limit} positions"
        )
