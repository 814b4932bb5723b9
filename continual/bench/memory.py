"""Peak resident memory of a block of work, sampled in a background thread (Linux)."""

from __future__ import annotations

import ctypes
import os
import threading


class PeakMemory:
    """Peak resident memory a method needs above what was live when it started.

    Freed memory is first handed back to the system (glibc ``malloc_trim``) so memory that an
    earlier method freed is not counted as this one's; then the resident size is sampled every
    20 ms. Linux only (elsewhere it reports 0).

    Examples:
        >>> with PeakMemory() as memory:
        ...     block = b"x" * 64_000_000  # 64 MB, written, so resident
        >>> memory.megabytes >= 64
        True
    """

    def __init__(self) -> None:
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def resident() -> int:
        """Resident bytes of this process now (0 where /proc is missing)."""
        try:
            with open("/proc/self/statm") as file:
                return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def __enter__(self) -> PeakMemory:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = self.peak = self.resident()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.resident())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.resident())

    @property
    def megabytes(self) -> float:
        return round((self.peak - self.base) / 1e6, 1)
