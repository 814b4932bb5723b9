"""An exclusive lock on a pool's folder, so two processes never change one pool at once."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from .errors import PoolFormatError, PoolLockedError
from .storage import LOCK, check_pool_folder


class PoolLock:
    """An exclusive lock on a pool directory, so two processes never change one pool at once.

    The folder must be one a pool may write into (`check_pool_folder`); the lock file is
    opened with ``O_NOFOLLOW`` and must be a regular file, so a planted link is never written.

    Args:
        pool_dir: the pool's folder (created if missing).
        timeout: seconds to wait for another holder; 0 fails at once.
    """

    def __init__(self, pool_dir: str | os.PathLike, timeout: float = 0.0) -> None:
        self.pool_dir = pool_dir
        self.path = Path(pool_dir) / LOCK
        self.timeout = timeout
        self._descriptor: int | None = None

    def __enter__(self) -> PoolLock:
        check_pool_folder(self.pool_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(
                self.path,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o666,
            )
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise PoolFormatError(
                    f"{self.path}: is a symbolic link; a pool's lock must be "
                    "a regular file (remove the link)"
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            os.close(handle)
            raise PoolFormatError(
                f"{self.path}: not a regular file; a pool's lock must be one (remove it)"
            )
        self._descriptor = handle
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    self._release()
                    raise
                if time.monotonic() >= deadline:
                    self._release()
                    raise PoolLockedError(
                        f"{self.path.parent}: another process is changing this pool; "
                        "wait for it to finish (or pass a longer --wait)"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        return self

    def _release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __exit__(self, *exc) -> None:
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            self._release()
