"""Small crash-safety helpers: every durable write in warm storage goes through these."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ._errors import (
    StorageError,
    StoreDirectoryMissingError,
    StorePermissionError,
    StoreWriteError,
    UnsafeStoreError,
)

FILE_MODE = 0o600
DIR_MODE = 0o700


def write_all(fd: int, parts: Iterable[bytes | memoryview], offset: int | None = None) -> int:
    """Write every part (``os.write`` may write less than asked). Returns bytes written."""
    total = 0
    for part in parts:
        view = memoryview(part).cast("B")
        while view:
            n = os.pwrite(fd, view, offset + total) if offset is not None else os.write(fd, view)
            view = view[n:]
            total += n
    return total


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, parts: Iterable[bytes | memoryview]) -> int:
    """Write a whole file crash-safely: temp file, fsync, rename, fsync the directory.

    A reader (or a restart after a crash) sees either the old file or the new
    one, never a mix. On failure the temp file is removed and the old file is
    untouched. Returns the size written.
    """
    return _replace(path, parts, sync=True)


def atomic_write_unsynced(path: Path, parts: Iterable[bytes | memoryview]) -> int:
    """:func:`atomic_write` without either fsync.

    The replacement stays atomic for readers and across a crash of this process
    (the rename is), but a power loss may lose it or leave the file empty or torn
    (a verified store detects that). For a store that is a cache of another source.
    """
    return _replace(path, parts, sync=False)


def _replace(path: Path, parts: Iterable[bytes | memoryview], *, sync: bool) -> int:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise translate_os_error(exc, tmp, "create") from exc
    try:
        try:
            size = write_all(fd, parts)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if sync:
            fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise translate_os_error(exc, path, "write") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return size


def translate_os_error(exc: OSError, path: Path, action: str) -> StorageError:
    """Map an OSError to the storage error a caller (and an operator) can act on."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        detail = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or "")
        return StorePermissionError(path, action, detail)
    # A vanished directory shows as ENOENT on the file inside it (e.g. a load).
    gone = action in ("create", "open directory") or not path.parent.is_dir()
    if exc.errno == errno.ENOENT and gone:
        return StoreDirectoryMissingError(path.parent)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        whose = "this process's" if exc.errno == errno.EMFILE else "the system's"
        return StoreWriteError(
            f"cannot {action} {str(path)!r}: too many open files ({whose} limit of file "
            "descriptors is reached)"
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreWriteError(f"cannot {action} {str(path)!r}: no space left on device")
    if exc.errno == errno.EFBIG:
        return StoreWriteError(
            f"cannot {action} {str(path)!r}: file too large (size limit reached)"
        )
    return StoreWriteError(f"cannot {action} {str(path)!r}: {exc.strerror or exc}")


def check_safe(path: Path, st: os.stat_result) -> None:
    """Refuse files another user could have written: they decide what agents may do."""
    if st.st_uid != os.geteuid():
        raise UnsafeStoreError(
            f"refusing warm storage file {str(path)!r}: owned by uid {st.st_uid}, not by this "
            f"process's uid {os.geteuid()}"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeStoreError(
            f"refusing warm storage file {str(path)!r}: writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
