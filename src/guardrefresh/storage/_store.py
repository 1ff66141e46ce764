"""Warm storage: a manifest, a snapshot and an append-only journal.

Files, for a store at ``warm_storage.bin`` (all named by :class:`StoreFiles`)::

    warm_storage.bin                 manifest (~100 bytes): generation, bridge version,
                                     rule count, sizes and checksums of the two files below
    warm_storage.bin.<gen>.snap      snapshot: one columnar segment holding every rule
    warm_storage.bin.<gen>.journal   segments appended since that snapshot (upserts, deletions)
    warm_storage.bin.lock            writers' advisory lock (flock)

Why this shape: an install of 10 rules into a store of 100k must not rewrite
820 MB of anchors. It appends one small segment to the journal (write +
fdatasync) and then replaces the manifest atomically (temp file, fsync,
rename, directory fsync). The manifest is the commit point: it records how
many journal bytes are committed and their checksum, so

- a crash before the rename leaves the old manifest, and the unacknowledged
  journal tail past the committed length is ignored (and cut off by the next
  append): a reader sees exactly the old rule set;
- a crash after it gives exactly the new rule set;
- any truncation or flipped bit in any of the three files is detected.

When the journal grows past a threshold, :meth:`WarmStore.compact` writes a new
snapshot and an empty journal under the next generation and switches the
manifest to them; the old generation's files are removed after the switch.

This module holds the writers' side (create, append, compact, replace); reading
and verifying is in ``_verify``, the manifest in ``_manifest``, the journal's open
descriptor in ``_journal``. All methods here block: call them through
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import attrs

from ..model import Rule
from ._compact import live_columns, wants_compaction
from ._encode import SegmentColumns, encode_segment, segment_bytes
from ._errors import (
    CorruptStoreError,
    StorageError,
    StoreDirectoryMissingError,
    StoreNotFoundError,
)
from ._fs import DIR_MODE, atomic_write, atomic_write_unsynced, translate_os_error
from ._journal import JournalAppender
from ._layout import FORMAT_VERSION
from ._manifest import Manifest, StoreInfo, journal_header, now_ms
from ._names import data_file_generation
from ._segment import decode_segment
from ._table import WarmTable
from ._verify import StoreReader, Vanished

logger = logging.getLogger(__name__)


class WarmStore(StoreReader):
    """Durable warm storage at ``path`` (the manifest; the other files sit beside it).

    One instance per process; writes from several processes are serialised
    with an advisory lock and a writer notices another writer's commits.
    Not thread-safe: the caller serialises calls (the bridge holds a lock).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._journal = JournalAppender(self.files)
        self._seen: Manifest | None = None  # the newest manifest loaded or committed here

    # -- paths -------------------------------------------------------------
    def snapshot_path(self, generation: int) -> Path:
        return self.files.snapshot(generation)

    def journal_path(self, generation: int) -> Path:
        return self.files.journal(generation)

    @property
    def sidecar_paths(self) -> list[Path]:
        return [self.files.lock, self.files.hot]

    # -- open / create -----------------------------------------------------
    def open(self, *, create: bool = True, make_dirs: bool = False) -> WarmTable:
        """Load the store, creating an empty one if there is none yet.

        Raises :class:`StoreDirectoryMissingError` when the directory is absent
        (unless ``make_dirs``: then it is created with mode 0700),
        :class:`StorePermissionError`, :class:`CorruptStoreError`,
        :class:`UnsupportedVersionError` or :class:`UnsafeStoreError`.
        """
        if not self.directory.is_dir():
            if not make_dirs:
                raise StoreDirectoryMissingError(self.directory)
            try:
                self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            except OSError as exc:
                raise translate_os_error(exc, self.directory, "create directory") from exc
        if not os.access(self.directory, os.R_OK | os.X_OK):
            raise translate_os_error(
                PermissionError(13, "Permission denied"), self.directory, "read directory"
            )
        if create and self.files.crash_leftovers():
            with self.files.locked():
                self._remove_crash_leftovers()
        if create and not self.path.exists():
            with self.files.locked():
                if not self.path.exists():
                    orphans = self.files.data_files()
                    if orphans:
                        # Never paper over a lost manifest with an empty store: the
                        # rules are still in these files.
                        raise CorruptStoreError(
                            self.path,
                            "manifest",
                            0,
                            f"missing, but data files exist ({', '.join(p.name for p in orphans)}); "
                            "restore the manifest from a backup or rebuild with 'guardrefresh warm import'",
                        )
                    self._create_empty()
        return self.load()

    def set_aside_damaged(self) -> Path:
        """Move the manifest and data files into ``<manifest>.damaged/`` (see
        :meth:`StoreFiles.set_aside`) so that :meth:`open` starts an empty store.
        Only for a store that is a cache of another source; returns that directory."""
        self.close()
        with self.files.locked():
            try:
                return self.files.set_aside()
            except OSError as exc:
                raise translate_os_error(exc, self.directory, "set aside the files in") from exc

    def _create_empty(self, generation: int = 1, bridge_version: int = 0) -> None:
        empty = SegmentColumns.from_rules([], bridge_version=bridge_version)
        empty.table_versions = {}
        snap = segment_bytes(empty)
        atomic_write(self.snapshot_path(generation), [snap])
        journal_head = journal_header(generation)
        atomic_write(self.journal_path(generation), [journal_head])
        seg = decode_segment(
            memoryview(snap), 0, path=self.snapshot_path(generation), what="snapshot"
        )
        manifest = Manifest.fresh(
            generation, bridge_version, 0, len(snap), seg.header_checksum, journal_head
        )
        atomic_write(self.path, [manifest.encode()])
        logger.info("Created empty warm storage at %s", self.path)

    def _recreate_if_emptied(self) -> bool:
        """Start an empty store again where this instance's store was emptied away.

        The caller holds the writers' lock and found no manifest. When this instance
        has read a store here before and none of its data files is left either (the
        directory was emptied, or deleted and recreated: at most the lock and working
        set files remain), the store is recreated empty, counting on from the
        generation and bridge version it last saw, so neither ever goes back. Returns
        whether there is a manifest now; data files without one stay refused.
        """
        if self.path.exists():
            return True  # another writer got there first
        seen = self._seen
        try:
            if seen is None or self.files.data_files():
                return False
        except OSError:  # the directory went away again
            return False
        self.close()
        self._create_empty(seen.generation + 1, seen.bridge_version + 1)
        logger.warning(
            "Warm storage %s was emptied (manifest and data files gone) after holding %d "
            "rules: started it again empty at generation %d, bridge version %d",
            self.path,
            seen.rule_count,
            seen.generation + 1,
            seen.bridge_version + 1,
        )
        return True

    def _remove_crash_leftovers(self) -> None:
        for entry in self.files.crash_leftovers():  # again: under the lock now
            with contextlib.suppress(OSError):
                entry.unlink()
                logger.info("Removed %s, left by a writer that died mid-write", entry.name)

    # -- load ----------------------------------------------------------------
    def load(self) -> WarmTable:
        """Read, verify and merge the whole store. Changes nothing on disk, except
        that a store this instance read before and whose files have all been
        removed since is started again empty (see :meth:`_recreate_if_emptied`).

        Anchors stay memory-mapped (zero copy); everything is verified against
        its checksum before it is returned.
        """
        for _attempt in range(5):
            try:
                table, manifest = self._load_once()
            except Vanished:
                continue
            except StoreNotFoundError:
                if self._seen is None:  # nothing was here for this instance: no store
                    raise
                with self.files.locked():
                    if not self._recreate_if_emptied():
                        raise
                continue
            self._seen = manifest
            return table
        raise StorageError(
            f"warm storage {str(self.path)!r} kept changing while loading; try again"
        )

    def info(self) -> StoreInfo:
        m = self.read_manifest()
        table = self.load()
        return StoreInfo(
            m,
            self.snapshot_path(m.generation),
            self.journal_path(m.generation),
            len(table.segments) - 1,
        )

    # -- write ---------------------------------------------------------------
    def append(
        self, base: WarmTable, upserts: Sequence[Rule], deletes: Sequence[str] = ()
    ) -> WarmTable:
        """Durably apply upserts and deletions; return the table that results.

        ``base`` is the caller's current table. If another process committed
        since, the store is reloaded first and the change applies on top of
        what is on disk. On any error nothing is committed and the previous
        state stays intact on disk (a partly written journal tail is ignored).
        """
        with self.files.locked():
            base, m = self._current(base)
            columns = SegmentColumns.from_rules(
                upserts, bridge_version=m.bridge_version + 1, deleted_ids=deletes
            )
            return self._append_locked(base, m, columns)

    def append_columns(
        self, base: WarmTable, columns: SegmentColumns, *, durable: bool = True
    ) -> WarmTable:
        """:meth:`append` of ready-made columns at their own ``bridge_version``.

        For a change whose version is decided elsewhere (fleet replication: the
        fleet's version becomes this store's). The version must be above the
        store's; :class:`ValueError` otherwise, with nothing written.

        ``durable=False`` (a fleet replica, whose source of truth is the database)
        skips the fsyncs: the commit is still atomic (journal append, then the
        manifest's rename) and survives a crash of the process, but a power loss
        may lose it or leave a store that fails verification at the next open.
        """
        with self.files.locked():
            base, m = self._current(base)
            if columns.bridge_version <= m.bridge_version:
                raise ValueError(
                    f"version {columns.bridge_version} does not advance the store's "
                    f"{m.bridge_version}"
                )
            return self._append_locked(base, m, columns, durable=durable)

    def _current(self, base: WarmTable) -> tuple[WarmTable, Manifest]:
        """The manifest on disk and ``base``, reloaded if another writer committed."""
        try:
            m = self.read_manifest()
        except StoreNotFoundError:
            if not self._recreate_if_emptied():
                raise
            m = self.read_manifest()
        if base.generation != m.generation or base.bridge_version != m.bridge_version:
            base, m = self._load_once()
        return base, m

    def _append_locked(
        self, base: WarmTable, m: Manifest, columns: SegmentColumns, *, durable: bool = True
    ) -> WarmTable:
        head, body = encode_segment(columns)
        record = head + b"".join(body)
        seg = decode_segment(
            memoryview(record), 0, path=self.journal_path(m.generation), what="new segment"
        )
        table = base.with_segment(seg)
        hasher = self._journal.write(m, record, sync=durable)
        new = attrs.evolve(
            m,
            format_version=FORMAT_VERSION,
            bridge_version=columns.bridge_version,
            rule_count=len(table),
            journal_size=m.journal_size + len(record),
            journal_checksum=hasher.intdigest(),
            updated_at_ms=now_ms(),
        )
        (atomic_write if durable else atomic_write_unsynced)(self.path, [new.encode()])
        self._journal.committed(new, hasher)
        self._seen = new
        return table

    def needs_compaction(self) -> bool:
        return self._seen is not None and wants_compaction(self._seen)

    def compact(self) -> WarmTable:
        """Fold the journal into a new snapshot (next generation); crash-safe.

        Holds the writers' lock throughout: other writers wait. Returns the
        compacted table (same rules, same bridge version).
        """
        with self.files.locked():
            table, m = self._load_once()
            generation = m.generation + 1
            head, body = encode_segment(live_columns(table))
            size = self._switch_generation(generation, table.bridge_version, len(table), head, body)
            logger.info(
                "Compacted warm storage: generation %d, %d rules, %d bytes",
                generation,
                len(table),
                size,
            )
        return self.load()

    def write_snapshot_from(self, rules: Sequence[Rule]) -> WarmTable:
        """Replace the whole store with exactly ``rules`` (``warm import``)."""
        with self.files.locked():
            try:
                m: Manifest | None = self.read_manifest()
            except StorageError:
                m = None
            # Without a readable manifest (rebuilding a damaged store), keep counting from
            # what the data files say, so generations and bridge versions never go back.
            last_generation, last_version = self._salvage_counters()
            generation = max(m.generation if m else 0, last_generation) + 1
            version = max(m.bridge_version if m else 0, last_version) + 1
            # Later duplicates win, as in the journal; a snapshot must hold each id once.
            rules = list({r.rule_id: r for r in rules}.values())
            columns = SegmentColumns.from_rules(rules, bridge_version=version)
            self._replace_locked(generation, columns)
        return self.load()

    def replace_columns(self, columns: SegmentColumns) -> WarmTable:
        """Replace the whole store with ``columns`` (each id once) at their version.

        Crash-safe as :meth:`write_snapshot_from` (the next generation's files are
        written first, the manifest switches to them in one rename). The version may
        be lower than the store's (a replica resynchronised to its fleet): the new
        generation tells readers the content is new.
        """
        if len(set(columns.ids)) != len(columns.ids):
            raise ValueError("duplicate rule ids in a whole-store replacement")
        with self.files.locked():
            try:
                m: Manifest | None = self.read_manifest()
            except StorageError:
                m = None
            # File names only: reading the old data files is for rebuilding damaged stores.
            last_generation = max(
                (data_file_generation(self.path, p.name) or 0 for p in self.files.data_files()),
                default=0,
            )
            self._replace_locked(max(m.generation if m else 0, last_generation) + 1, columns)
        return self.load()

    def _replace_locked(self, generation: int, columns: SegmentColumns) -> None:
        version = columns.bridge_version
        columns.table_versions = {
            (fam, lay): version for fam, lay in zip(columns.families, columns.layers, strict=True)
        }
        head, body = encode_segment(columns)
        self._switch_generation(generation, version, len(columns.ids), head, body)

    def _switch_generation(
        self,
        generation: int,
        bridge_version: int,
        rule_count: int,
        head: bytes,
        body: Sequence[memoryview | bytes],
    ) -> int:
        """Write a snapshot and an empty journal for ``generation``, then switch to them.

        The caller holds the writers' lock. The manifest's rename is the commit point;
        the files of other generations are removed after it. Returns the snapshot size.
        """
        size = atomic_write(self.snapshot_path(generation), [head, *body])
        journal_head = journal_header(generation)
        atomic_write(self.journal_path(generation), [journal_head])
        header_checksum = struct.unpack_from("<Q", head, 56)[0]
        new = Manifest.fresh(
            generation, bridge_version, rule_count, size, header_checksum, journal_head
        )
        atomic_write(self.path, [new.encode()])
        self.close()
        self.files.remove_other_generations(keep=generation)
        return size

    def close(self) -> None:
        self._journal.close()
