"""The manifest: the small file whose atomic replacement commits every change.

It records the generation, the bridge version, the rule count, and the sizes and
checksums of the snapshot and of the committed part of the journal. The journal's
fixed header is described here too, since the manifest's checksum covers it.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import attrs
import xxhash

from ._errors import CorruptStoreError, UnsupportedVersionError
from ._layout import FORMAT_VERSION, READABLE_VERSIONS

MANIFEST_MAGIC = b"GRWARM\r\n"
JOURNAL_MAGIC = b"GRJRNL\r\n"
_MANIFEST = struct.Struct("<8sHHIQQQQQQQqQ")
JOURNAL_HEADER = struct.Struct("<8sHHIQ")
JOURNAL_HEADER_SIZE = 64


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

    @classmethod
    def fresh(
        cls,
        generation: int,
        bridge_version: int,
        rule_count: int,
        snapshot_size: int,
        snapshot_header_checksum: int,
        journal_head: bytes,
    ) -> Manifest:
        """The manifest of a new generation: a snapshot and a journal holding only its header."""
        return cls(
            generation,
            bridge_version,
            rule_count,
            snapshot_size,
            snapshot_header_checksum,
            len(journal_head),
            xxhash.xxh3_64_intdigest(journal_head),
            now_ms(),
        )


@attrs.frozen
class StoreInfo:
    """What ``warm inspect`` shows: the manifest and the files it names."""

    manifest: Manifest
    snapshot_path: Path
    journal_path: Path
    journal_segments: int


def journal_header(generation: int) -> bytes:
    """The fixed-size header that starts the journal of ``generation``."""
    head = JOURNAL_HEADER.pack(JOURNAL_MAGIC, FORMAT_VERSION, 0, 0, generation)
    return head + bytes(JOURNAL_HEADER_SIZE - len(head))


def now_ms() -> int:
    return int(time.time() * 1000)
