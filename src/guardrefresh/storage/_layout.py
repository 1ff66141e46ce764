"""The columnar segment's layout: the unit of the warm-storage file format.

A segment holds a batch of rules column by column (ids, dictionary-coded
family/layer/agent names, a fixed-width record per rule, lazily decoded
extras, and one contiguous float32 anchor block), plus optional deleted ids.
A snapshot file is one segment; a journal is a sequence of them.

Layout (little endian, every section starts on a 64-byte boundary)::

    header   64 bytes  magic, version, sizes, bridge version, header checksum
    table    32 bytes per section: kind, offset, length, checksum
    sections ...

Every byte is covered by a checksum: the header checksum covers the header and
the section table (padded to 64), each section checksum covers the section and
its padding. Truncation shows as a size mismatch, a flipped bit as a checksum
mismatch; both name the section and the offset.

This module holds the layout's constants; ``_encode`` writes segments and
``_segment`` reads and verifies them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ALIGN",
    "FIXED_DTYPE",
    "FORMAT_VERSION",
    "HEADER",
    "READABLE_VERSIONS",
    "SECTION_ENTRY",
    "SEGMENT_MAGIC",
    "Section",
    "join_text",
    "pad",
    "split_text",
]

SEGMENT_MAGIC = b"GRSEG\x00\r\n"
#: Written by this build. Version 2 added the ``padding`` column (anchor vectors sent
#: beyond the scored count). Version 1 stores are read as they are (those bytes were
#: zero: no padding); the next write appends version 2 segments and a version 2
#: manifest, and the next compaction rewrites the snapshot as version 2.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
ALIGN = 64

HEADER = struct.Struct("<8sHHIQQIIQqQ")  # 64 bytes
SECTION_ENTRY = struct.Struct("<IIQQQ")  # 32 bytes
assert HEADER.size == 64 and SECTION_ENTRY.size == 32

#: One fixed-width record per rule. ``digest`` fingerprints the whole rule, so a
#: refresh can tell changed rules from unchanged ones without decoding them.
#: ``counts`` are the scored anchors per slot, ``padding`` the vectors sent after
#: them (stored so a rule reads back as installed); format 1 had zeros there.
FIXED_DTYPE = np.dtype(
    [
        ("digest", "<u8"),
        ("created_at_ms", "<i8"),
        ("priority", "<i4"),
        ("drift_threshold", "<f4"),
        ("slice_weights", "<f4", (4,)),
        ("counts", "u1", (4,)),
        ("enabled", "u1"),
        ("policy", "u1"),
        ("has_weights", "u1"),
        ("padding", "u1", (4,)),
        ("pad", "u1", (5,)),
    ]
)
assert FIXED_DTYPE.itemsize == 56


class Section:
    IDS = 1
    FAMILY_NAMES = 2
    FAMILY_CODES = 3
    LAYER_NAMES = 4
    LAYER_CODES = 5
    AGENT_NAMES = 6
    AGENT_CODES = 7
    FIXED = 8
    EXTRAS_OFFSETS = 9
    EXTRAS = 10
    ANCHORS = 11
    DELETED_IDS = 12
    TABLE_VERSIONS = 13
    INSTALLER_NAMES = 14
    INSTALLER_CODES = 15

    NAMES = {
        1: "ids",
        2: "family names",
        3: "family codes",
        4: "layer names",
        5: "layer codes",
        6: "agent names",
        7: "agent codes",
        8: "fixed fields",
        9: "extras offsets",
        10: "extras",
        11: "anchors",
        12: "deleted ids",
        13: "table versions",
        14: "installer names",
        15: "installer codes",
    }


def pad(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def join_text(values: Sequence[str]) -> bytes:
    # NUL never occurs in validated names, so it can separate them.
    return "\x00".join(values).encode("utf-8") if values else b""


def split_text(raw: bytes | memoryview, count: int) -> list[str]:
    if count == 0:
        return []
    return bytes(raw).decode("utf-8").split("\x00")
