"""What `PromptPoolStrategy.save_checkpoint` writes beside the pool: counters and the
evaluator's state, as JSON (nothing is pickled, so loading a checkpoint runs no code).

The evaluator's state is what its metrics carry from one experience to the next (forgetting's
first accuracy on each experience, BWT's, running means, counters) and its metric history:
every attribute that holds numbers, text, or lists and maps of them, read from each metric
object and the plain objects it holds. A resumed run's evaluator then reports what an
uninterrupted run's reports, forgetting included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import nn

from ...errors import PoolFormatError
from ...files import atomic_write_bytes, read_regular_file

CHECKPOINT_FILE = "avalanche_strategy.json"
CLOCK_KEYS = (
    "train_iterations",
    "train_exp_counter",
    "train_exp_epochs",
    "train_exp_iterations",
    "train_epoch_iterations",
    "total_iterations",
)
# A metric history grows with every logged value: far above a long run's, far below harm.
LIMIT = 256 << 20
# How deep into a metric's objects the state is read (metric -> helper -> its means).
DEPTH = 5
# The evaluator's own fields that hold state (its loggers hold files, not state).
EVALUATOR_FIELDS = ("metrics", "all_metric_results", "last_metric_results")


def write_state(folder: Path, clock: object, min_outputs: int, evaluator: object) -> None:
    """Write the counters and ``evaluator``'s state to ``folder / CHECKPOINT_FILE``, atomically
    (a crash leaves the previous file, never half of one)."""
    state = {
        "clock": {key: getattr(clock, key) for key in CLOCK_KEYS},
        "min_outputs": min_outputs,
        "evaluator": {
            "object": {
                name: _encode(getattr(evaluator, name), DEPTH, set())
                for name in EVALUATOR_FIELDS
                if hasattr(evaluator, name)
            }
        },
    }
    atomic_write_bytes(folder / CHECKPOINT_FILE, (json.dumps(state) + "\n").encode())


def read_state(folder: Path) -> dict[str, Any] | None:
    """The state `write_state` wrote (None without a file), checked: a clear error naming the
    file if it is damaged."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    data = read_regular_file(path, limit=LIMIT, error=PoolFormatError, what="checkpoint")
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PoolFormatError(f"{path}: not valid JSON ({error})") from None
    clock = state.get("clock", {}) if isinstance(state, dict) else None
    if not isinstance(clock, dict) or not all(
        key in CLOCK_KEYS and type(value) is int and value >= 0 for key, value in clock.items()
    ):
        raise PoolFormatError(f"{path}: field 'clock' must map {', '.join(CLOCK_KEYS)} to counts")
    minimum = state.get("min_outputs", 0)
    if type(minimum) is not int or minimum < 0:
        raise PoolFormatError(f"{path}: field 'min_outputs' must be a count, got {minimum!r}")
    evaluator = state.get("evaluator")
    if evaluator is not None and not _is_object(evaluator):
        raise PoolFormatError(f"{path}: field 'evaluator' is not an evaluator's state")
    return {"clock": clock, "min_outputs": minimum, "evaluator": evaluator}


def restore(strategy: Any, folder: Path) -> None:
    """Put the counters and evaluator state saved in ``folder`` back into ``strategy`` (its
    evaluator built as the saved one was: the same metrics in the same order)."""
    state = read_state(folder)
    if state is None:
        return
    for key, value in state["clock"].items():
        setattr(strategy.clock, key, value)
    strategy.model.min_outputs = state["min_outputs"]
    if state["evaluator"] is not None:
        _restore(strategy.evaluator, state["evaluator"])


# -- plain state: {"value": x} | {"list": [...]} | {"map": [[key, ...], ...]} | {"object": {}}
def _encode(value: Any, depth: int, seen: set[int]) -> dict | None:
    """``value`` as JSON-able plain state, or None for what is not plain (tensors, modules,
    functions, loggers' files, objects deeper than ``depth``)."""
    if value is None or isinstance(value, (bool, int, str)):
        return {"value": value}
    if isinstance(value, float):
        return {"value": value if math.isfinite(value) else repr(value), "float": True}
    if isinstance(value, (list, tuple)):
        items = [_encode(item, depth, seen) for item in value]
        return None if any(item is None for item in items) else {"list": items}
    if isinstance(value, dict):
        pairs = [
            [key, _encode(item, depth, seen)]
            for key, item in value.items()
            if isinstance(key, (int, str)) and not isinstance(key, bool)
        ]
        return {"map": [pair for pair in pairs if pair[1] is not None]}
    if depth == 0 or id(value) in seen or isinstance(value, (nn.Module, type)):
        return None
    fields = getattr(value, "__dict__", None)
    if not isinstance(fields, dict) or callable(value):
        return None
    seen.add(id(value))
    encoded = {name: _encode(item, depth - 1, seen) for name, item in fields.items()}
    kept = {name: item for name, item in encoded.items() if item is not None}
    return {"object": kept, "type": type(value).__name__}


def _decode(encoded: dict) -> Any:
    if "value" in encoded:
        return float(encoded["value"]) if encoded.get("float") else encoded["value"]
    if "list" in encoded:
        return [_decode(item) for item in encoded["list"]]
    raise PoolFormatError("checkpoint: an evaluator value is not plain data")


def _restore(target: object, encoded: dict) -> None:
    saved_type = encoded.get("type", type(target).__name__)
    if saved_type != type(target).__name__:
        raise PoolFormatError(
            f"checkpoint: the evaluator has a {type(target).__name__} where the saved one had a "
            f"{saved_type}; resume with an evaluator built with the same metrics in the same order"
        )
    for name, item in encoded["object"].items():
        if not hasattr(target, name) or not isinstance(item, dict):
            continue
        current = getattr(target, name)
        if _is_object(item):
            _restore(current, item)
        elif "list" in item and isinstance(current, list) and any(map(_is_object, item["list"])):
            for element, saved in zip(current, item["list"]):  # e.g. the evaluator's metrics
                if _is_object(saved):
                    _restore(element, saved)
        elif "map" in item and isinstance(current, dict):
            _restore_map(current, item["map"])
        elif "map" not in item:
            setattr(target, name, _decode(item))


def _restore_map(current: dict, pairs: list) -> None:
    plain = {key: value for key, value in pairs if not _is_object(value) and "map" not in value}
    for key in [key for key in current if key not in dict(pairs)]:
        del current[key]
    for key, value in pairs:
        if key in plain:
            current[key] = _decode(value)
        elif key in current or hasattr(current, "default_factory"):
            # A defaultdict makes the object (e.g. a running mean) to restore into.
            if _is_object(value):
                _restore(current[key], value)
            elif isinstance(current[key], dict):
                _restore_map(current[key], value["map"])


def _is_object(encoded: object) -> bool:
    return isinstance(encoded, dict) and isinstance(encoded.get("object"), dict)
