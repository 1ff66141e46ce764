"""Appending to the journal: one open descriptor, kept in step with the manifest.

The journal of a generation is appended to in place (write + fdatasync); the new
segment counts only once the manifest recording the new length and checksum has
been switched in. Bytes past the committed length (a crash between the append and
the manifest switch) are cut off by the next append. Not thread-safe; blocks.
"""

from __future__ import annotations

import os
from pathlib import Path

import xxhash

from ._errors import CorruptStoreError
from ._files import StoreFiles
from ._fs import translate_os_error, write_all
from ._manifest import Manifest


class JournalAppender:
    """Appends to the journal of the manifest's generation, with a running checksum."""

    def __init__(self, files: StoreFiles) -> None:
        self._files = files
        self._fd: int | None = None
        self._generation = 0
        self._hash = xxhash.xxh3_64()
        self._manifest: Manifest | None = None  # the manifest ``_hash`` is in step with

    def write(self, m: Manifest, record: bytes, *, sync: bool = True) -> xxhash.xxh3_64:
        """Write ``record`` after ``m``'s committed bytes and make it durable
        (``sync=False``: leave it in the page cache, no fdatasync).

        Returns the checksum state covering the committed bytes and ``record``; pass
        it to :meth:`committed` once a manifest recording them has been switched in.
        Raises a storage error (nothing committed) when the file cannot be written.
        """
        fd = self._open_for(m)
        path = self._files.journal(m.generation)
        try:
            # Cut any unacknowledged tail a crash left behind, then append.
            os.ftruncate(fd, m.journal_size)
            write_all(fd, [record], offset=m.journal_size)
            if sync:
                os.fdatasync(fd)
        except OSError as exc:
            raise translate_os_error(exc, path, "append to") from exc
        hasher = self._hash.copy()
        hasher.update(record)
        return hasher

    def committed(self, m: Manifest, hasher: xxhash.xxh3_64) -> None:
        """Record that ``m``, covering the bytes ``hasher`` has seen, is now the manifest."""
        self._hash = hasher
        self._manifest = m

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open_for(self, m: Manifest) -> int:
        """The open journal of ``m``'s generation, with its hash state in sync with ``m``.

        Reopened when the file at the journal's path is no longer the one held open
        (deleted, replaced, restored from a copy): appending to the old inode would
        commit a manifest describing bytes the file on disk does not hold.
        """
        path = self._files.journal(m.generation)
        if (
            self._fd is None
            or self._generation != m.generation
            or self._manifest != m
            or not _same_file(self._fd, path)
        ):
            self.close()
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise translate_os_error(exc, path, "open") from exc
            hasher = xxhash.xxh3_64()
            remaining, offset = m.journal_size, 0
            while remaining:
                chunk = os.pread(fd, min(remaining, 1 << 20), offset)
                if not chunk:
                    os.close(fd)
                    raise CorruptStoreError(path, "journal", offset, "truncated")
                hasher.update(chunk)
                offset += len(chunk)
                remaining -= len(chunk)
            if hasher.intdigest() != m.journal_checksum:
                os.close(fd)
                raise CorruptStoreError(path, "journal", 0, "checksum of committed bytes mismatch")
            self._fd, self._generation, self._hash = fd, m.generation, hasher
            self._manifest = m
        return self._fd


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
