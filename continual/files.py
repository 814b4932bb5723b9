"""One bounded reader for the files a pool and its data come from, and one writer of the new
files a user names.

Data files, manifests, task files, exported tasks and the server's manifest polls go through
`read_regular_file`: regular files only, capped. A file the user names for output (``continual
export --out``) goes through `write_new_file`, which never replaces what it must not.

A FIFO, a device (``/dev/zero``), a socket or a directory is refused before a byte is read: the
file is opened with ``O_NONBLOCK`` (so opening a FIFO cannot block) and checked with ``fstat``
on the open descriptor (so a symlink swapped in between cannot fool the check). With
``follow_symlinks=False`` the last path component must not be a symbolic link (``O_NOFOLLOW``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

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


def write_new_file(
    path: str | os.PathLike,
    data: bytes,
    *,
    pool_folder_of: Callable[[Path], Path | None],
    force: bool = False,
    error: type[ContinualError] = ContinualError,
) -> Path:
    """Write ``data`` as the new file ``path``, complete or not at all.

    Refused with ``error`` (one line naming ``path``, nothing written): a path inside a pool's
    folder (``pool_folder_of(folder)`` names the pool a folder is or lies in, else None: its
    manifest, lock or task files, or anything beside them), a missing folder (none
    is created), an existing path unless ``force`` (and then only a regular file, replaced by
    an atomic rename, never written through), and a device, FIFO, socket, folder or symbolic
    link whatever ``force`` says. The bytes go to a synced temporary beside the target first;
    without ``force`` the temporary is hard-linked into place, which fails if anything
    appeared there meanwhile.
    """
    if os.fspath(path) == "":
        raise error("the output path is empty; give a file name")
    path = Path(path)
    folder = path.parent
    try:
        mode = folder.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: folder {str(folder)!r} does not exist; create it first") from None
    except OSError as failure:
        raise error(f"{path}: cannot use folder {str(folder)!r} ({failure.strerror})") from None
    if not stat.S_ISDIR(mode):
        raise error(f"{path}: {str(folder)!r} is not a folder")
    pool = pool_folder_of(folder)
    if pool is not None:
        raise error(
            f"{path}: inside the pool folder {str(pool)!r}; a pool holds only the files it "
            "writes itself: write the file elsewhere"
        )
    _check_target(path, force, error)
    temporary = f".{path.name}.{secrets.token_hex(8)}.tmp"
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_synced_temporary(directory, temporary, data)
        try:
            if force:
                _check_target(path, force, error)  # again, just before the rename
                os.replace(temporary, path.name, src_dir_fd=directory, dst_dir_fd=directory)
            else:
                _link_new(directory, temporary, path.name)
        except FileExistsError:
            raise error(
                f"{path}: appeared while being written; nothing was replaced (pass --force "
                "to replace a file)"
            ) from None
        finally:
            try:
                os.unlink(temporary, dir_fd=directory)
            except FileNotFoundError:
                pass
        os.fsync(directory)  # the new name is durable only once the folder entry is on disk
    except OSError as failure:
        raise error(f"{path}: cannot write ({failure.strerror or failure})") from None
    finally:
        os.close(directory)
    return path


def _link_new(directory: int, temporary: str, name: str) -> None:
    """Give the complete ``temporary`` the new ``name``; `FileExistsError` if it is taken."""
    try:
        os.link(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError as failure:
        if failure.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        # A file system without hard links: claim the name first, then rename onto the claim.
        os.close(
            os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, dir_fd=directory)
        )
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)


def _check_target(path: Path, force: bool, error: type[ContinualError]) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise error(f"{path}: is a symbolic link; refusing to replace it or write through it")
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is {_kind(mode)}; refusing to replace it")
    if not force:
        raise error(f"{path}: already exists; pass --force to replace it")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and an atomic rename.

    The temporary is created with ``O_EXCL | O_NOFOLLOW`` and the rename replaces whatever
    ``path`` was (a symbolic link there is replaced, never followed). An error names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = f".{path.name}.{secrets.token_hex(8)}.tmp"
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_synced_temporary(directory, temporary, data)
        try:
            os.replace(temporary, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=directory)
            except OSError:
                pass
            raise
        # The rename is durable only once the directory entry is on disk.
        os.fsync(directory)
    except OSError as error:
        # os.write and fsync errors (a full disk) name no file, os.open only the temporary:
        # name the file being written.
        reason = error.strerror or str(error)
        raise OSError(error.errno, f"cannot write ({reason})", str(path)) from None
    finally:
        os.close(directory)


def write_synced_temporary(directory: int, name: str, data: bytes) -> None:
    """Create ``name`` (new, not through a link) in the open ``directory``, write ``data`` and
    sync it; removed again if anything fails."""
    # The usual permissions (0o666 less the umask), as open() gives.
    handle = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o666,
        dir_fd=directory,
    )
    try:
        try:
            _write_all(handle, data)
            os.fsync(handle)
        finally:
            os.close(handle)
    except BaseException:
        try:
            os.unlink(name, dir_fd=directory)
        except OSError:
            pass
        raise


def _write_all(handle: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(handle, view) :]
