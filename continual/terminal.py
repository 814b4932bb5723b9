"""What the command line prints: one escaped line, and strict JSON."""

from __future__ import annotations

import json
import math
from typing import Any


def one_line(message: str) -> str:
    """``message`` on one line (runs of white space as one space), escaped by `printable`."""
    return printable(" ".join(message.split()))


def printable(text: str) -> str:
    """``text`` with control, other non-printable and undecodable characters escaped, so that
    a name read from a file cannot drive the terminal."""
    return "".join(
        character if character.isprintable() else _escape(character) for character in text
    )


def _escape(character: str) -> str:
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogate escape)
        return f"\\x{code - 0xDC00:02x}"
    return character.encode("unicode_escape").decode("ascii")


def strict_json(value: Any, **options: Any) -> str:
    """``value`` as strict JSON: a non-finite number (NaN, infinity) is written as null."""
    return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
