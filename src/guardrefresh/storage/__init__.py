"""Warm storage: the durable, verified, columnar rule store on disk."""

from ._encode import SegmentColumns
from ._errors import (
    CorruptStoreError,
    StorageError,
    StoreBusyError,
    StoreDirectoryMissingError,
    StoreNotFoundError,
    StorePermissionError,
    StoreWriteError,
    UnsafeStoreError,
    UnsupportedVersionError,
)
from ._fs import atomic_write
from ._layout import FIXED_DTYPE, FORMAT_VERSION
from ._manifest import Manifest, StoreInfo
from ._names import journal_path, lock_path, snapshot_path, working_set_path
from ._segment import Segment
from ._store import WarmStore
from ._table import RuleRef, TableStat, WarmTable, family_of

__all__ = [
    "FIXED_DTYPE",
    "FORMAT_VERSION",
    "CorruptStoreError",
    "Manifest",
    "RuleRef",
    "Segment",
    "SegmentColumns",
    "StorageError",
    "StoreBusyError",
    "StoreDirectoryMissingError",
    "StoreInfo",
    "StoreNotFoundError",
    "StorePermissionError",
    "StoreWriteError",
    "TableStat",
    "UnsafeStoreError",
    "UnsupportedVersionError",
    "WarmStore",
    "WarmTable",
    "atomic_write",
    "family_of",
    "journal_path",
    "lock_path",
    "snapshot_path",
    "working_set_path",
]
