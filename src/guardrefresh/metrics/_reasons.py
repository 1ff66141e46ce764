"""The ``reason`` label of a failed refresh: which part of the world refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Final

import trio

from ..storage import (
    CorruptStoreError,
    StorageError,
    StoreBusyError,
    StoreDirectoryMissingError,
    StorePermissionError,
    StoreWriteError,
    UnsafeStoreError,
    UnsupportedVersionError,
)

__all__ = ["REFRESH_ERROR_REASONS", "refresh_error_reason"]

#: Every value of the ``reason`` label of ``guard_scheduler_refresh_errors_total``.
REFRESH_ERROR_REASONS: Final = (
    "corrupt",  # a file failed verification (CorruptStoreError)
    "version",  # written by a newer format (UnsupportedVersionError)
    "permission",  # the OS refused access (StorePermissionError, PermissionError)
    "unsafe",  # owned by another user or writable by others (UnsafeStoreError)
    "missing",  # the directory or a file is gone (StoreDirectoryMissingError, FileNotFoundError)
    "busy",  # another process holds the store's lock (StoreBusyError)
    "io",  # any other storage or OS error (StoreWriteError, StorageError, OSError)
    "cancelled",  # the service shut down during the refresh
    "other",  # anything else: a bug
)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it: ``__cause__``, else an unsuppressed ``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


# Most specific first: a subclass must come before its base.
_SPECIFIC_REASONS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (CorruptStoreError, "corrupt"),
    (UnsupportedVersionError, "version"),
    (StorePermissionError, "permission"),
    (UnsafeStoreError, "unsafe"),
    (StoreDirectoryMissingError, "missing"),
    (StoreBusyError, "busy"),
    (StoreWriteError, "io"),
)
_GENERIC_REASONS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (PermissionError, "permission"),
    (FileNotFoundError, "missing"),
    (NotADirectoryError, "missing"),
    (StorageError, "io"),
    (OSError, "io"),
)


def refresh_error_reason(exc: BaseException) -> str:
    """The ``reason`` label for a failed refresh: one of :data:`REFRESH_ERROR_REASONS`.

    Looks at ``exc`` and the chain of exceptions that caused it (``raise ... from``
    or, failing that, implicit chaining): the most specific storage error anywhere
    in the chain decides (a :class:`~guardrefresh.refresh.RefreshError` wrapping a
    :class:`~guardrefresh.storage.CorruptStoreError` is ``"corrupt"``); then a
    cancellation; then generic OS and storage errors; else ``"other"``. Never raises.
    """
    chain = list(_causes(exc))
    for error in chain:
        for cls, reason in _SPECIFIC_REASONS:
            if isinstance(error, cls):
                return reason
    if any(isinstance(error, trio.Cancelled | asyncio.CancelledError) for error in chain):
        return "cancelled"
    for error in chain:
        for cls, reason in _GENERIC_REASONS:
            if isinstance(error, cls):
                return reason
    return "other"
