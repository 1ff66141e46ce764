"""Reading a warm store: every byte checked against the manifest before it is used.

``StoreReader._load_once`` maps the snapshot and the committed part of the journal (zero copy),
checks sizes, headers and checksums, and merges them into a :class:`WarmTable`.
Nothing here writes. All functions block.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import xxhash

from ._errors import CorruptStoreError, StoreNotFoundError
from ._files import StoreFiles
from ._fs import check_safe, translate_os_error
from ._layout import READABLE_VERSIONS
from ._manifest import JOURNAL_HEADER, JOURNAL_HEADER_SIZE, JOURNAL_MAGIC, Manifest
from ._names import data_file_generation
from ._segment import Segment, decode_segment, peek_segment
from ._table import WarmTable


class Vanished(Exception):
    """A file named by the manifest disappeared: a concurrent compaction; retry."""


class StoreReader:
    """Reads and verifies the store whose files ``files`` names; never writes.

    Methods are overridable hooks for tests and the writer (:class:`WarmStore`
    subclasses this), which is why they are methods and not functions.
    """

    def __init__(self, path: Path) -> None:
        self.files = StoreFiles(path)
        self.path = self.files.path
        self.directory = self.files.directory

    def read_manifest(self) -> Manifest:
        return Manifest.decode(self._read_checked(self.files.path, "open"), self.files.path)

    def _read_checked(self, path: Path, action: str) -> bytes:
        """The whole of ``path``, refusing unsafe files; a missing manifest is StoreNotFoundError."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if path == self.files.path and self.files.directory.is_dir():
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
        """Map the first ``length`` bytes of ``path``; returns the view and the file size.

        Raises :class:`Vanished` when the file is gone because the manifest changed
        meanwhile (another writer compacted): the caller loads again.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if self.read_manifest() != manifest:
                raise Vanished from None
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
        """Read, verify and merge the store as its manifest describes it now."""
        m = self.read_manifest()
        snap_path = self.files.snapshot(m.generation)
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
        journal = self._journal_segments(m)
        try:
            table = WarmTable.build(base, journal, generation=m.generation)
        except ValueError as exc:
            raise CorruptStoreError(snap_path, "ids", 0, str(exc)) from None
        if len(table) != m.rule_count or table.bridge_version != m.bridge_version:
            raise CorruptStoreError(
                self.files.path,
                "manifest",
                0,
                f"records {m.rule_count} rules at version {m.bridge_version}, files hold "
                f"{len(table)} at version {table.bridge_version}",
            )
        return table, m

    def _journal_segments(self, m: Manifest) -> list[Segment]:
        path = self.files.journal(m.generation)
        view, _size = self._map(path, m.journal_size, m)
        if xxhash.xxh3_64_intdigest(view) != m.journal_checksum:
            # Name the first bad segment when we can; the checksum catches the rest.
            self._scan_journal(view, path, m)
            raise CorruptStoreError(path, "journal", 0, "checksum of committed bytes mismatch")
        return self._scan_journal(view, path, m)

    @staticmethod
    def _scan_journal(view: memoryview, path: Path, m: Manifest) -> list[Segment]:
        if len(view) < JOURNAL_HEADER_SIZE:
            raise CorruptStoreError(path, "journal header", 0, f"truncated: {len(view)} bytes")
        magic, version, _f, _r, generation = JOURNAL_HEADER.unpack_from(view, 0)
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

    def _salvage_counters(self) -> tuple[int, int]:
        """Best-effort (generation, bridge version) from data files, trusting no checksum."""
        generation = version = 0
        for path in self.files.data_files():
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
