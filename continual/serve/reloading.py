"""The served pool, reloaded when the pool on disk changes.

A background thread polls the pool's manifest; when another process adds or removes a task, the
entries are reloaded on the same backbone and the served pool is swapped as one reference, so
requests in flight finish on the pool they started on.
"""

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ContinualError, PoolFormatError
from ..files import MAX_MANIFEST_BYTES, read_regular_file
from ..format import some_names
from ..storage import MANIFEST

log = logging.getLogger("continual.serve")


class PoolHolder:
    """Holds the pool being served and swaps it when the manifest on disk changes.

    Reloading reads the manifest and the files of tasks added since (`PromptPool.reload`); the
    backbone, the entries still named and the selector's pooled statistics are reused. A reload
    that fails (a save half-seen, a corrupt file) keeps the current pool and is retried next
    poll.
    """

    def __init__(self, path: str | os.PathLike, load: Callable[[], Any]) -> None:
        self.path = Path(path)
        self.reloads = 0
        self.reload_error: str | None = None
        # The manifest is read before the pool it names: a save landing in between then
        # shows as a change at the first poll instead of passing unseen.
        self._signature = self._stat()
        self._digest = self._read_digest()
        self.pool = load()
        self._lock = threading.Lock()

    def _stat(self) -> tuple | None:
        try:
            info = (self.path / MANIFEST).stat()
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _read_digest(self) -> str | None:
        # Through the bounded reader: a manifest swapped for a FIFO or a link never blocks or
        # misleads the poller (it keeps the pool it serves).
        try:
            data = read_regular_file(
                self.path / MANIFEST,
                limit=MAX_MANIFEST_BYTES,
                error=PoolFormatError,
                what="manifest",
                follow_symlinks=False,
            )
        except (OSError, ContinualError):
            return None
        return hashlib.sha256(data).hexdigest()

    def check(self) -> bool:
        """Reload if the manifest changed; True when a new pool is now served."""
        with self._lock:
            signature = self._stat()
            if signature == self._signature:
                return False
            digest = self._read_digest()
            if digest is None:
                self.reload_error = f"{self.path / MANIFEST}: cannot read the manifest"
                return False
            if digest == self._digest:  # the served pool's manifest, e.g. restored after a bad one
                self._signature = signature
                self.reload_error = None
                return False
            try:
                pool = self.pool.reload(self.path)
            except ContinualError as error:
                self.reload_error = " ".join(str(error).split())
                log.warning("keeping the served pool; reload failed: %s", self.reload_error)
                return False
            before = set(self.pool.tasks)
            self.pool = pool  # one reference: requests in flight keep the pool they started on
            self._signature, self._digest = signature, digest
            self.reload_error = None
            self.reloads += 1
            added = sorted(set(pool.tasks) - before)
            removed = sorted(before - set(pool.tasks))
            # Names listed at most five at a time: a pool of 1,000 tasks logs one short line.
            log.warning(
                "reloaded %s: %d task(s); added %s; removed %s",
                self.path,
                len(pool.tasks),
                some_names(added) or "none",
                some_names(removed) or "none",
            )
            return True

    def poll_forever(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                self.check()
            except Exception as error:
                self.reload_error = " ".join(str(error).split())
                log.exception("pool poll failed")
