"""One bounded reader for the files a pool and its data come from: regular files only, capped.

Data files, manifests, task files, exported tasks and the server's manifest polls go through it.

A FIFO, a device (``/dev/zero``), a socket or a directory is refused before a byte is read: the
file is opened with ``O_NONBLOCK`` (so opening a FIFO cannot block) and checked with ``fstat``
on the open descriptor (so a symlink swapped in between cannot fool the check). With
``follow_symlinks=False`` the last path component must not be a symbolic link (``O_NOFOLLOW``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from .errors import ContinualError

# Size limits; module attributes so a caller (or a test) can change them.
MAX_DATA_FILE_BYTES = 2 << 30  # a task's CSV/JSONL/text file
MAX_MANIFEST_BYTES = 64 << 20  # a pool's manifest.json
MAX_TASK_FILE_BYTES = 1 << 30  # one task's safetensors file

_CHUNK = 1 << 20


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular_file(
    path: str | os.PathLike,
    *,
    limit: int,
    error: type[ContinualError] = ContinualError,
    what: str = "file",
    follow_symlinks: bool = True,
    dir_fd: int | None = None,
) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    Every refusal raises ``error`` with a one-line message naming ``path`` (and the limit, for
    a file too large). ``dir_fd`` opens ``path`` relative to an open directory.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        descriptor = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as failure:
        if failure.errno == errno.ELOOP and not follow_symlinks:
            raise error(
                f"{path}: is a symbolic link; refusing to follow it (a {what} must be "
                "a regular file)"
            ) from None
        if failure.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing only
            raise error(f"{path}: not a regular file; expected a {what}") from None
        raise error(f"{path}: cannot read the {what} ({failure.strerror})") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise error(
                f"{path}: is {_kind(status.st_mode)}, not a regular file; expected a {what}"
            )
        if status.st_size > limit:
            raise error(
                f"{path}: {status.st_size} bytes, over the limit of {limit} bytes for a {what}"
            )
        chunks = []
        size = 0
        while True:
            try:
                chunk = os.read(descriptor, min(_CHUNK, limit + 1 - size))
            except OSError as failure:
                raise error(f"{path}: cannot read the {what} ({failure.strerror})") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # the file grew while being read
                raise error(f"{path}: over the limit of {limit} bytes for a {what}")
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (for large files: wheels, GGUF)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
