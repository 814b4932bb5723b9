"""A ``POST /predict`` body, checked whole before it is queued.

Everything a batch could fail on is checked here (valid UTF-8 texts without lone surrogates, the
size limits, numbers in range, a task name that may exist): a bad request gets a 4xx with
``{"error": "<one line>"}`` (names cut to 80 characters) and never reaches a batch, so it fails
alone.
"""

import json
import math

from ..errors import ContinualError


class RequestError(Exception):
    """A bad request: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())


def parse_predict_request(body: bytes, pool, *, max_texts: int, max_chars: int) -> tuple:
    """``(texts, task, min_score, refuse)`` from a /predict body, or `RequestError`.

    Everything a batch could fail on is checked here, so a bad request fails alone: texts that
    are strings, non-empty, within ``max_chars`` and encodable as UTF-8 (no lone surrogate
    from a ``\\ud800`` escape), numbers that are finite floats in range, a valid task name.
    """
    from ..format import check_task_name, pool_has, quote_name, some_names
    from ..routing import CALIBRATION_LEVELS

    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RequestError(400, f"malformed JSON: {str(error)[:200]}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, "the body must be a JSON object with a 'texts' list")
    unknown = sorted(set(payload) - {"texts", "task", "min_score", "refuse"})
    if unknown:
        raise RequestError(
            422, f"unknown field(s) {some_names(unknown)}; expected texts, task, min_score, refuse"
        )
    if "texts" not in payload:
        raise RequestError(422, "missing field 'texts' (a list of strings)")
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, "field 'texts' must be a list of strings")
    if not texts:
        raise RequestError(422, "field 'texts' is empty; give at least one text")
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; at most {max_texts}")
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"texts[{number}] is a {type(text).__name__}, not a string")
        if not text.strip():
            raise RequestError(422, f"texts[{number}] is empty")
        if len(text) > max_chars:
            raise RequestError(
                413, f"texts[{number}] has {len(text)} characters; at most {max_chars}"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RequestError(
                422,
                f"texts[{number}] is not valid UTF-8: a lone surrogate "
                f"(U+{ord(text[error.start]):04X}) at character {error.start}",
            ) from None
    task = payload.get("task")
    if task is not None:
        try:
            check_task_name(task, "field 'task'")
        except ContinualError as error:
            raise RequestError(422, str(error)) from None
        if task not in pool.tasks:
            raise RequestError(404, f"unknown task {quote_name(task)}; {pool_has(pool.tasks)}")
    min_score = _number(payload.get("min_score"), "min_score", "a finite number or null")
    refuse = _number(payload.get("refuse"), "refuse", "a share from 0.01 to 0.2, or null")
    if refuse is not None:
        low, high = CALIBRATION_LEVELS[0], CALIBRATION_LEVELS[-1]
        if not low <= refuse <= high:  # checked even where a named task is never refused
            raise RequestError(422, f"field 'refuse' must be a share from {low} to {high}")
        if task is None:
            try:
                pool.refusal_thresholds(refuse)  # every task calibrated
            except ContinualError as error:
                raise RequestError(422, f"field 'refuse': {error}") from None
    return texts, task, min_score, refuse


def _number(value: object, name: str, expected: str) -> float | None:
    """``value`` as a finite float, None for null, or `RequestError` (a bool is no number; an
    integer too large for a float is refused, not overflowed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(422, f"field {name!r} must be {expected}")
    try:
        number = float(value)
    except OverflowError:
        raise RequestError(422, f"field {name!r} must be {expected} (too large)") from None
    if not math.isfinite(number):
        raise RequestError(422, f"field {name!r} must be {expected}")
    return number
