"""The names of a store's files, all derived from the manifest's path.

For a store at ``warm_storage.bin``: the manifest itself, ``warm_storage.bin.<gen>.snap``
and ``warm_storage.bin.<gen>.journal`` (one pair per generation),
``warm_storage.bin.lock`` (the writers' lock) and ``warm_storage.bin.hot`` (the working
set saved for the next warm-up). Every part of the service that needs one of these
names asks here, so a store's files are always found together.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "data_file_generation",
    "journal_path",
    "lock_path",
    "snapshot_path",
    "working_set_path",
]


def snapshot_path(store: Path, generation: int) -> Path:
    """The snapshot of ``generation``: one columnar segment holding every rule."""
    return store.with_name(f"{store.name}.{generation:08d}.snap")


def journal_path(store: Path, generation: int) -> Path:
    """The journal of ``generation``: segments appended since its snapshot."""
    return store.with_name(f"{store.name}.{generation:08d}.journal")


def lock_path(store: Path) -> Path:
    """The writers' advisory lock."""
    return store.with_name(store.name + ".lock")


def working_set_path(store: Path) -> Path:
    """The working set (most recently used rule ids) kept for the next warm-up."""
    return store.with_name(store.name + ".hot")


def data_file_generation(store: Path, name: str) -> int | None:
    """The generation of the snapshot or journal file called ``name`` (a name in the
    store's directory), or None when ``name`` is no data file of ``store``."""
    match = re.fullmatch(re.escape(store.name) + r"\.(\d{8})\.(snap|journal)", name)
    return int(match.group(1)) if match is not None else None
