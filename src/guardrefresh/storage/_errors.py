from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class StorageError(Exception):
    """Base class: warm storage could not be read or written. Nothing was changed."""


class StoreDirectoryMissingError(StorageError):
    def __init__(self, directory: Path) -> None:
        super().__init__(f"warm storage directory {str(directory)!r} does not exist")
        self.directory = directory


class StoreNotFoundError(StorageError):
    """There is no store at that path (the directory exists, the manifest does not)."""


class StorePermissionError(StorageError):
    def __init__(self, path: Path, action: str, detail: str = "") -> None:
        msg = f"permission denied: cannot {action} {str(path)!r}"
        super().__init__(f"{msg}: {detail}" if detail else msg)
        self.path = path


class UnsafeStoreError(StorageError):
    """A store file is owned by another user or writable by others: refused."""


class CorruptStoreError(StorageError):
    """A store file failed verification; ``section`` and ``offset`` say where."""

    def __init__(self, path: Path, section: str, offset: int, problem: str) -> None:
        super().__init__(
            f"corrupt warm storage {str(path)!r}: {section} at offset {offset}: {problem}"
        )
        self.path = path
        self.section = section
        self.offset = offset
        self.problem = problem


class UnsupportedVersionError(StorageError):
    def __init__(self, path: Path, found: int, supported: Sequence[int]) -> None:
        readable = " or ".join(str(v) for v in supported)
        super().__init__(
            f"warm storage {str(path)!r} has format version {found}; this build reads version {readable}"
        )
        self.path = path
        self.found = found


class StoreWriteError(StorageError):
    """A write failed (disk full, file too large, read-only, ...); the store is unchanged."""


class StoreBusyError(StorageError):
    """Another process holds the store's write lock."""
