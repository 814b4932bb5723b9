"""Progress for long work that behaves in a terminal and in a log file.

On a terminal, a live tqdm bar. Elsewhere (output sent to a file or a pipe), a redrawn bar would
write thousands of carriage-return frames into the log, so a few plain lines are printed
instead: one when the work starts and one at each ``checkpoint`` (an epoch, a task).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """A progress counter over ``total`` steps.

    Args:
        total: steps expected (None: unknown).
        description: what is running, shown on every line.
        enabled: False shows nothing at all.
        stream: where to write (default: standard error).

    Use as a context manager; call `update` per step and `checkpoint` at natural boundaries.
    """

    def __init__(
        self,
        total: int | None,
        description: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        unit: str = "step",
    ) -> None:
        self.stream = stream or sys.stderr
        self.description = description
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.started = time.perf_counter()
        self._bar: Any = None
        self._postfix: dict[str, str] = {}
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=description, unit=unit, leave=False, file=self.stream
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, steps: int = 1, **postfix: object) -> None:
        """Count ``steps`` more; ``postfix`` values (a loss, an accuracy) are shown beside."""
        self.done += steps
        self._postfix.update({key: str(value) for key, value in postfix.items()})
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix(self._postfix, refresh=False)

    def checkpoint(self, message: str = "", **postfix: object) -> None:
        """A boundary worth a plain line in a log (ignored on a terminal, where the bar shows)."""
        self._postfix.update({key: str(value) for key, value in postfix.items()})
        if self._bar is not None:
            self._bar.set_postfix(self._postfix)
            return
        if not self.enabled:
            return
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        details = " ".join(f"{key}={value}" for key, value in self._postfix.items())
        elapsed = time.perf_counter() - self.started
        parts = [self.description, message, f"{count} steps", details, f"{elapsed:.0f}s"]
        print(" ".join(part for part in parts if part), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def say(message: str, *, enabled: bool = True) -> None:
    """One line of progress on standard error."""
    if enabled:
        print(message, file=sys.stderr, flush=True)
