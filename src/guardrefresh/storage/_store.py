"""Warm storage: a manifest, a snapshot and an append-only journal.

Files, for a store at ``warm_storage.bin``::

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
All methods here block: call them through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import re
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import numpy as np
import xxhash

from ..model import Rule
from ._errors import (
    CorruptStoreError,
    StorageError,
    StoreDirectoryMissingError,
    StoreNotFoundError,
    UnsupportedVersionError,
)
from ._fs import (
    DIR_MODE,
    FILE_MODE,
    atomic_write,
    check_safe,
    fsync_dir,
    translate_os_error,
    write_all,
)
from ._names import (
    data_file_generation,
    journal_path,
    lock_path,
    snapshot_path,
    working_set_path,
)
from ._segment import (
    FORMAT_VERSION,
    READABLE_VERSIONS,
    Segment,
    SegmentColumns,
    decode_segment,
    encode_segment,
    peek_segment,
    segment_bytes,
)
from ._table import WarmTable

logger = logging.getLogger(__name__)

MANIFEST_MAGIC = b"GRWARM\r\n"
JOURNAL_MAGIC = b"GRJRNL\r\n"
_MANIFEST = struct.Struct("<8sHHIQQQQQQQqQ")
_JOURNAL_HEADER = struct.Struct("<8sHHIQ")
JOURNAL_HEADER_SIZE = 64
#: Compact once the journal is this large and at least a quarter of the snapshot.
COMPACT_MIN_BYTES = 4 * 1024 * 1024
COMPACT_RATIO = 0.25


@attrs.frozen
class Manifest:
    generation: int
    bridge_version: int
    rule_count: int
    snapshot_size: int
    snapshot_header_checksum: int
    journal_size: int
    journal_checksum: int
    updated_at_ms: int
    #: The version the file carried when read; a manifest is always written as
    #: FORMAT_VERSION (this build writes only that). Not part of equality.
    format_version: int = attrs.field(default=FORMAT_VERSION, eq=False)

    def encode(self) -> bytes:
        body = _MANIFEST.pack(
            MANIFEST_MAGIC,
            FORMAT_VERSION,
            0,
            0,
            self.generation,
            self.bridge_version,
            self.rule_count,
            self.snapshot_size,
            self.snapshot_header_checksum,
            self.journal_size,
            self.journal_checksum,
            self.updated_at_ms,
            0,
        )
        return body[:-8] + struct.pack("<Q", xxhash.xxh3_64_intdigest(body[:-8]))

    @classmethod
    def decode(cls, raw: bytes, path: Path) -> Manifest:
        # The version first: a newer build's manifest may well have another size.
        if len(raw) >= 10 and raw[:8] == MANIFEST_MAGIC:
            (version,) = struct.unpack_from("<H", raw, 8)
            if version not in READABLE_VERSIONS:
                raise UnsupportedVersionError(path, version, READABLE_VERSIONS)
        if len(raw) != _MANIFEST.size:
            raise CorruptStoreError(
                path,
                "manifest",
                min(len(raw), _MANIFEST.size),
                f"expected {_MANIFEST.size} bytes, found {len(raw)}",
            )
        fields = _MANIFEST.unpack(raw)
        magic, version, checksum = fields[0], fields[1], fields[-1]
        if magic != MANIFEST_MAGIC:
            raise CorruptStoreError(
                path, "manifest", 0, "bad magic (not a guardrefresh warm store)"
            )
        if version not in READABLE_VERSIONS:
            raise UnsupportedVersionError(path, version, READABLE_VERSIONS)
        if xxhash.xxh3_64_intdigest(raw[:-8]) != checksum:
            raise CorruptStoreError(path, "manifest", 0, "checksum mismatch")
        # magic, version, flags, reserved | the fields of this class | checksum
        return attrs.evolve(cls(*fields[4:-1]), format_version=version)


@attrs.frozen
class StoreInfo:
    """What ``warm inspect`` shows: the manifest and the files it names."""

    manifest: Manifest
    snapshot_path: Path
    journal_path: Path
    journal_segments: int


class _Vanished(Exception):
    """A file named by the manifest disappeared: a concurrent compaction; retry."""


class WarmStore:
    """Durable warm storage at ``path`` (the manifest; the other files sit beside it).

    One instance per process; writes from several processes are serialised
    with an advisory lock and a writer notices another writer's commits.
    Not thread-safe: the caller serialises calls (the bridge holds a lock).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.directory = self.path.parent
        self._lock_path = lock_path(self.path)
        self._manifest: Manifest | None = None  # what this writer last committed or read
        self._journal_fd: int | None = None
        self._journal_gen = 0
        self._journal_hash = xxhash.xxh3_64()
        self._seen: Manifest | None = None  # the newest manifest loaded or committed here

    # -- paths -------------------------------------------------------------
    def snapshot_path(self, generation: int) -> Path:
        return snapshot_path(self.path, generation)

    def journal_path(self, generation: int) -> Path:
        return journal_path(self.path, generation)

    @property
    def sidecar_paths(self) -> list[Path]:
        return [self._lock_path, working_set_path(self.path)]

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
        if create and self._crash_leftovers():
            with self._locked():
                self._remove_crash_leftovers()
        if create and not self.path.exists():
            with self._locked():
                if not self.path.exists():
                    orphans = self._data_files()
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

    def _create_empty(self, generation: int = 1, bridge_version: int = 0) -> None:
        empty = SegmentColumns.from_rules([], bridge_version=bridge_version)
        empty.table_versions = {}
        snap = segment_bytes(empty)
        atomic_write(self.snapshot_path(generation), [snap])
        journal_head = self._journal_header(generation)
        atomic_write(self.journal_path(generation), [journal_head])
        seg = decode_segment(
            memoryview(snap), 0, path=self.snapshot_path(generation), what="snapshot"
        )
        manifest = Manifest(
            generation,
            bridge_version,
            0,
            len(snap),
            seg.header_checksum,
            len(journal_head),
            xxhash.xxh3_64_intdigest(journal_head),
            _now_ms(),
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
            if seen is None or self._data_files():
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

    @staticmethod
    def _journal_header(generation: int) -> bytes:
        head = _JOURNAL_HEADER.pack(JOURNAL_MAGIC, FORMAT_VERSION, 0, 0, generation)
        return head + bytes(JOURNAL_HEADER_SIZE - len(head))

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
            except _Vanished:
                continue
            except StoreNotFoundError:
                if self._seen is None:  # nothing was here for this instance: no store
                    raise
                with self._locked():
                    if not self._recreate_if_emptied():
                        raise
                continue
            self._seen = manifest
            return table
        raise StorageError(
            f"warm storage {str(self.path)!r} kept changing while loading; try again"
        )

    def read_manifest(self) -> Manifest:
        return Manifest.decode(self._read_checked(self.path, "open"), self.path)

    def _crash_leftovers(self) -> list[Path]:
        """Temp files of store writes whose writer process is gone."""
        pattern = re.compile(
            r"\." + re.escape(self.path.name) + r"(\.\d{8}\.(snap|journal))?\.tmp-(\d+)$"
        )
        found = []
        for entry in self.directory.iterdir():
            match = pattern.match(entry.name)
            if match is not None and not _pid_alive(int(match.group(3))):
                found.append(entry)
        return found

    def _remove_crash_leftovers(self) -> None:
        for entry in self._crash_leftovers():  # again: under the lock now
            with contextlib.suppress(OSError):
                entry.unlink()
                logger.info("Removed %s, left by a writer that died mid-write", entry.name)

    def _salvage_counters(self) -> tuple[int, int]:
        """Best-effort (generation, bridge version) from data files, trusting no checksum."""
        generation = version = 0
        for path in self._data_files():
            generation = max(generation, data_file_generation(self.path, path.name) or 0)
            try:
                raw = path.read_bytes()
            except OSError:
                continue
            offset = JOURNAL_HEADER_SIZE if path.suffix == ".journal" else 0
            while (peeked := peek_segment(raw, offset)) is not None:
                version = max(version, peeked[0])
                offset += peeked[1]
        return generation, version

    def _data_files(self) -> list[Path]:
        return sorted(
            p
            for p in self.directory.iterdir()
            if data_file_generation(self.path, p.name) is not None
        )

    def _read_checked(self, path: Path, action: str) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if path == self.path and self.directory.is_dir():
                raise StoreNotFoundError(
                    f"no warm storage at {str(path)!r} (no manifest)"
                ) from None
            raise translate_os_error(FileNotFoundError(2, "No such file"), path, action) from None
        except OSError as exc:
            raise translate_os_error(exc, path, action) from exc
        try:
            check_safe(path, os.fstat(fd))
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _map(self, path: Path, length: int, manifest: Manifest) -> tuple[memoryview, int]:
        """Map the first ``length`` bytes of ``path``; returns the view and the file size."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if self.read_manifest() != manifest:
                raise _Vanished from None
            raise CorruptStoreError(path, "file", 0, "missing (named by the manifest)") from None
        except OSError as exc:
            raise translate_os_error(exc, path, "open") from exc
        try:
            st = os.fstat(fd)
            check_safe(path, st)
            if st.st_size < length:
                raise CorruptStoreError(
                    path, "file", st.st_size, f"truncated: {st.st_size} of {length} bytes present"
                )
            if length == 0:
                return memoryview(b""), st.st_size
            try:
                # mmap duplicates the descriptor: EMFILE can strike here, after the open.
                mapped = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
            except OSError as exc:
                raise translate_os_error(exc, path, "map") from exc
            return memoryview(mapped), st.st_size
        finally:
            os.close(fd)

    def _load_once(self) -> tuple[WarmTable, Manifest]:
        m = self.read_manifest()
        snap_path = self.snapshot_path(m.generation)
        snap, snap_size = self._map(snap_path, m.snapshot_size, m)
        if snap_size != m.snapshot_size:
            raise CorruptStoreError(
                snap_path,
                "file",
                m.snapshot_size,
                f"size {snap_size} differs from the manifest's {m.snapshot_size}",
            )
        base = decode_segment(snap, 0, path=snap_path, what="snapshot")
        if base.size != m.snapshot_size or base.header_checksum != m.snapshot_header_checksum:
            raise CorruptStoreError(snap_path, "snapshot header", 0, "does not match the manifest")
        journal = list(self._journal_segments(m))
        try:
            table = WarmTable.build(base, journal, generation=m.generation)
        except ValueError as exc:
            raise CorruptStoreError(snap_path, "ids", 0, str(exc)) from None
        if len(table) != m.rule_count or table.bridge_version != m.bridge_version:
            raise CorruptStoreError(
                self.path,
                "manifest",
                0,
                f"records {m.rule_count} rules at version {m.bridge_version}, files hold "
                f"{len(table)} at version {table.bridge_version}",
            )
        return table, m

    def _journal_segments(self, m: Manifest) -> Iterator[Segment]:
        path = self.journal_path(m.generation)
        view, _size = self._map(path, m.journal_size, m)
        if xxhash.xxh3_64_intdigest(view) != m.journal_checksum:
            # Name the first bad segment when we can; the checksum catches the rest.
            self._scan_journal(view, path, m)
            raise CorruptStoreError(path, "journal", 0, "checksum of committed bytes mismatch")
        return iter(self._scan_journal(view, path, m))

    def _scan_journal(self, view: memoryview, path: Path, m: Manifest) -> list[Segment]:
        if len(view) < JOURNAL_HEADER_SIZE:
            raise CorruptStoreError(path, "journal header", 0, f"truncated: {len(view)} bytes")
        magic, version, _f, _r, generation = _JOURNAL_HEADER.unpack_from(view, 0)
        if magic != JOURNAL_MAGIC:
            raise CorruptStoreError(path, "journal header", 0, "bad magic")
        if version not in READABLE_VERSIONS:
            # Under a manifest this build reads: damage (see decode_segment).
            raise CorruptStoreError(
                path,
                "journal header",
                8,
                f"format version {version}, expected one of {READABLE_VERSIONS}",
            )
        if generation != m.generation:
            raise CorruptStoreError(
                path, "journal header", 0, "generation does not match the manifest"
            )
        segments: list[Segment] = []
        offset = JOURNAL_HEADER_SIZE
        while offset < len(view):
            seg = decode_segment(view, offset, path=path, what=f"journal segment {len(segments)}")
            segments.append(seg)
            offset += seg.size
        return segments

    # -- write ---------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise translate_os_error(exc, self._lock_path, "create") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def append(
        self, base: WarmTable, upserts: Sequence[Rule], deletes: Sequence[str] = ()
    ) -> WarmTable:
        """Durably apply upserts and deletions; return the table that results.

        ``base`` is the caller's current table. If another process committed
        since, the store is reloaded first and the change applies on top of
        what is on disk. On any error nothing is committed and the previous
        state stays intact on disk (a partly written journal tail is ignored).
        """
        with self._locked():
            base, m = self._current(base)
            columns = SegmentColumns.from_rules(
                upserts, bridge_version=m.bridge_version + 1, deleted_ids=deletes
            )
            return self._append_locked(base, m, columns)

    def append_columns(self, base: WarmTable, columns: SegmentColumns) -> WarmTable:
        """:meth:`append` of ready-made columns at their own ``bridge_version``.

        For a change whose version is decided elsewhere (fleet replication: the
        fleet's version becomes this store's). The version must be above the
        store's; :class:`ValueError` otherwise, with nothing written.
        """
        with self._locked():
            base, m = self._current(base)
            if columns.bridge_version <= m.bridge_version:
                raise ValueError(
                    f"version {columns.bridge_version} does not advance the store's "
                    f"{m.bridge_version}"
                )
            return self._append_locked(base, m, columns)

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

    def _append_locked(self, base: WarmTable, m: Manifest, columns: SegmentColumns) -> WarmTable:
        head, body = encode_segment(columns)
        record = head + b"".join(body)
        seg = decode_segment(
            memoryview(record), 0, path=self.journal_path(m.generation), what="new segment"
        )
        table = base.with_segment(seg)
        fd = self._journal_for(m)
        path = self.journal_path(m.generation)
        try:
            # Cut any unacknowledged tail a crash left behind, then append.
            os.ftruncate(fd, m.journal_size)
            write_all(fd, [record], offset=m.journal_size)
            os.fdatasync(fd)
        except OSError as exc:
            raise translate_os_error(exc, path, "append to") from exc
        hasher = self._journal_hash.copy()
        hasher.update(record)
        new = attrs.evolve(
            m,
            format_version=FORMAT_VERSION,
            bridge_version=columns.bridge_version,
            rule_count=len(table),
            journal_size=m.journal_size + len(record),
            journal_checksum=hasher.intdigest(),
            updated_at_ms=_now_ms(),
        )
        atomic_write(self.path, [new.encode()])
        self._journal_hash = hasher
        self._manifest = self._seen = new
        return table

    def _journal_for(self, m: Manifest) -> int:
        """The open journal of ``m``'s generation, with its hash state in sync with ``m``.

        Reopened when the file at the journal's path is no longer the one held open
        (deleted, replaced, restored from a copy): appending to the old inode would
        commit a manifest describing bytes the file on disk does not hold.
        """
        path = self.journal_path(m.generation)
        if (
            self._journal_fd is None
            or self._journal_gen != m.generation
            or self._manifest != m
            or not _same_file(self._journal_fd, path)
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
            self._journal_fd, self._journal_gen, self._journal_hash = fd, m.generation, hasher
            self._manifest = m
        return self._journal_fd

    def needs_compaction(self) -> bool:
        m = self._seen
        if m is None:
            return False
        journal = m.journal_size - JOURNAL_HEADER_SIZE
        return journal >= COMPACT_MIN_BYTES and journal >= COMPACT_RATIO * m.snapshot_size

    def compact(self) -> WarmTable:
        """Fold the journal into a new snapshot (next generation); crash-safe.

        Holds the writers' lock throughout: other writers wait. Returns the
        compacted table (same rules, same bridge version).
        """
        with self._locked():
            table, m = self._load_once()
            generation = m.generation + 1
            columns = _columns_of(table)
            head, body = encode_segment(columns)
            snap_path = self.snapshot_path(generation)
            size = atomic_write(snap_path, [head, *body])
            journal_head = self._journal_header(generation)
            atomic_write(self.journal_path(generation), [journal_head])
            header_checksum = struct.unpack_from("<Q", head, 56)[0]
            new = Manifest(
                generation,
                table.bridge_version,
                len(table),
                size,
                header_checksum,
                len(journal_head),
                xxhash.xxh3_64_intdigest(journal_head),
                _now_ms(),
            )
            atomic_write(self.path, [new.encode()])
            self.close()
            self._remove_stale(keep=generation)
            logger.info(
                "Compacted warm storage: generation %d, %d rules, %d bytes",
                generation,
                len(table),
                size,
            )
        return self.load()

    def _remove_stale(self, keep: int) -> None:
        for entry in self.directory.iterdir():
            generation = data_file_generation(self.path, entry.name)
            if generation is not None and generation != keep:
                with contextlib.suppress(OSError):
                    entry.unlink()
        fsync_dir(self.directory)

    def info(self) -> StoreInfo:
        m = self.read_manifest()
        table = self.load()
        return StoreInfo(
            m,
            self.snapshot_path(m.generation),
            self.journal_path(m.generation),
            len(table.segments) - 1,
        )

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def write_snapshot_from(self, rules: Sequence[Rule]) -> WarmTable:
        """Replace the whole store with exactly ``rules`` (``warm import``)."""
        with self._locked():
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
        with self._locked():
            try:
                m: Manifest | None = self.read_manifest()
            except StorageError:
                m = None
            # File names only: reading the old data files is for rebuilding damaged stores.
            last_generation = max(
                (int(p.name.rsplit(".", 2)[-2]) for p in self._data_files()), default=0
            )
            self._replace_locked(max(m.generation if m else 0, last_generation) + 1, columns)
        return self.load()

    def _replace_locked(self, generation: int, columns: SegmentColumns) -> None:
        version = columns.bridge_version
        columns.table_versions = {
            (fam, lay): version for fam, lay in zip(columns.families, columns.layers, strict=True)
        }
        head, body = encode_segment(columns)
        size = atomic_write(self.snapshot_path(generation), [head, *body])
        journal_head = self._journal_header(generation)
        atomic_write(self.journal_path(generation), [journal_head])
        new = Manifest(
            generation,
            version,
            len(columns.ids),
            size,
            struct.unpack_from("<Q", head, 56)[0],
            len(journal_head),
            xxhash.xxh3_64_intdigest(journal_head),
            _now_ms(),
        )
        atomic_write(self.path, [new.encode()])
        self.close()
        self._remove_stale(keep=generation)


def _columns_of(table: WarmTable) -> SegmentColumns:
    """Gather the live rows of every segment into one set of columns."""
    ids: list[str] = []
    families: list[str] = []
    layers: list[str] = []
    agents: list[str] = []
    installers: list[str] = []
    fixed = []
    extras: list[bytes] = []
    anchors = []
    for seg, live in zip(table.segments, table._live, strict=True):
        if not seg.n:
            continue
        rows = np.flatnonzero(live)
        if not len(rows):
            continue
        every = len(rows) == seg.n
        row_list = rows.tolist()
        ids.extend(seg.ids[r] for r in row_list)
        for names, codes, out in (
            (seg.family_names, seg.family_codes, families),
            (seg.layer_names, seg.layer_codes, layers),
            (seg.agent_names, seg.agent_codes, agents),
            (seg.installer_names, seg.installer_codes, installers),
        ):
            out.extend(names[c] for c in (codes if every else codes[rows]).tolist())
        fixed.append(seg.fixed if every else seg.fixed[rows])
        offs = seg.extras_offsets.tolist()
        ex = seg.extras
        extras.extend(bytes(ex[offs[r] : offs[r + 1]]) for r in row_list)
        anchors.append(seg.anchors if every else seg.anchors[rows])
    from ._segment import FIXED_DTYPE

    return SegmentColumns(
        ids=ids,
        families=families,
        layers=layers,
        agents=agents,
        installers=installers,
        fixed=np.concatenate(fixed) if fixed else np.zeros(0, dtype=FIXED_DTYPE),
        extras=extras,
        anchors=anchors,
        bridge_version=table.bridge_version,
        table_versions=dict(table.table_versions),
    )


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now_ms() -> int:
    return int(time.time() * 1000)
