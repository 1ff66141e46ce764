"""The columnar segment: the unit of the warm-storage file format.

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
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from ..model import (
    BLOCK_SHAPE,
    MAX_ANCHORS,
    POLICY_BY_CODE,
    POLICY_CODES,
    ParamScalar,
    Rule,
    RuleAnchors,
)
from ._errors import CorruptStoreError

SEGMENT_MAGIC = b"GRSEG\x00\r\n"
#: Written by this build. Version 2 added the ``padding`` column (anchor vectors sent
#: beyond the scored count). Version 1 stores are read as they are (those bytes were
#: zero: no padding); the next write appends version 2 segments and a version 2
#: manifest, and the next compaction rewrites the snapshot as version 2.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
ALIGN = 64

_HEADER = struct.Struct("<8sHHIQQIIQqQ")  # 64 bytes
_ENTRY = struct.Struct("<IIQQQ")  # 32 bytes
assert _HEADER.size == 64 and _ENTRY.size == 32

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


def _pad(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


_ZEROS = bytes(ALIGN)


def _join_text(values: Sequence[str]) -> bytes:
    # NUL never occurs in validated names, so it can separate them.
    return "\x00".join(values).encode("utf-8") if values else b""


def _split_text(raw: bytes | memoryview, count: int) -> list[str]:
    if count == 0:
        return []
    return bytes(raw).decode("utf-8").split("\x00")


def _dictionary(values: Sequence[str]) -> tuple[list[str], npt.NDArray[np.uint32]]:
    names: dict[str, int] = {}
    codes = np.fromiter((names.setdefault(v, len(names)) for v in values), np.uint32, len(values))
    return list(names), codes


def encode_extras(rule: Rule) -> bytes:
    """Rarely needed fields, JSON-encoded; decoded only when a rule is materialised."""
    doc: dict[str, Any] = {}
    if rule.params:
        doc["p"] = {k: list(v) if isinstance(v, tuple) else v for k, v in rule.params.items()}
    if rule.modification_spec:
        doc["m"] = rule.modification_spec
    if rule.config_id:
        doc["c"] = rule.config_id
    if rule.owner:
        doc["o"] = rule.owner
    return (
        json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        if doc
        else b""
    )


def _fixed_row(rule: Rule) -> tuple[Any, ...]:
    anchors = rule.anchors
    weights = rule.slice_weights or (0.0, 0.0, 0.0, 0.0)
    row = (
        0,
        rule.created_at_ms,
        rule.priority,
        rule.drift_threshold,
        weights,
        anchors.counts,
        int(rule.enabled),
        POLICY_CODES[rule.policy_type],
        int(bool(rule.slice_weights)),
        tuple(sent - count for sent, count in zip(anchors.sent, anchors.counts, strict=True)),
        (0,) * 5,
    )
    return row


def rule_digest(rule: Rule, fixed: np.void, extras: bytes) -> int:
    h = xxhash.xxh3_64()
    h.update(
        _join_text((rule.rule_id, rule.family_id, rule.layer, rule.agent_id, rule.installed_by))
    )
    h.update(b"\x01")
    h.update(fixed.tobytes()[8:])  # everything but the digest itself
    h.update(extras)
    h.update(np.ascontiguousarray(rule.anchors.vectors).tobytes())
    return h.intdigest()


class SegmentColumns:
    """Columns ready to be written as one segment."""

    __slots__ = (
        "agents",
        "anchors",
        "bridge_version",
        "deleted_ids",
        "extras",
        "families",
        "fixed",
        "ids",
        "installers",
        "layers",
        "table_versions",
    )

    def __init__(
        self,
        *,
        ids: list[str],
        families: list[str],
        layers: list[str],
        agents: list[str],
        installers: list[str],
        fixed: npt.NDArray[Any],
        extras: list[bytes],
        anchors: list[npt.NDArray[np.float32]],
        bridge_version: int,
        deleted_ids: Sequence[str] = (),
        table_versions: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.ids = ids
        self.families = families
        self.layers = layers
        self.agents = agents
        self.installers = installers
        self.fixed = fixed
        self.extras = extras
        self.anchors = anchors  # chunks, concatenated in order
        self.bridge_version = bridge_version
        self.deleted_ids = list(deleted_ids)
        self.table_versions = table_versions

    @classmethod
    def from_rules(
        cls, rules: Sequence[Rule], *, bridge_version: int, deleted_ids: Sequence[str] = ()
    ) -> SegmentColumns:
        n = len(rules)
        fixed = np.zeros(n, dtype=FIXED_DTYPE)
        extras = []
        anchors = np.empty((n, *BLOCK_SHAPE), dtype=np.float32)
        for i, rule in enumerate(rules):
            ex = encode_extras(rule)
            extras.append(ex)
            fixed[i] = _fixed_row(rule)
            fixed["digest"][i] = rule_digest(rule, fixed[i], ex)
            anchors[i] = rule.anchors.vectors
        return cls(
            ids=[r.rule_id for r in rules],
            families=[r.family_id for r in rules],
            layers=[r.layer for r in rules],
            agents=[r.agent_id for r in rules],
            installers=[r.installed_by for r in rules],
            fixed=fixed,
            extras=extras,
            anchors=[anchors],
            bridge_version=bridge_version,
            deleted_ids=deleted_ids,
        )


def _bytes_view(array: npt.NDArray[np.float32]) -> memoryview:
    flat = np.ascontiguousarray(array, dtype="<f4").reshape(-1)
    return memoryview(flat.data).cast("B")


def encode_segment(columns: SegmentColumns) -> tuple[bytes, list[memoryview | bytes]]:
    """Return the header (with section table) and the body parts, in file order.

    The parts are not copied into one buffer: the anchor chunks go to disk
    straight from their arrays.
    """
    n = len(columns.ids)
    fam_names, fam_codes = _dictionary(columns.families)
    lay_names, lay_codes = _dictionary(columns.layers)
    agt_names, agt_codes = _dictionary(columns.agents)
    ins_names, ins_codes = _dictionary(columns.installers)
    offsets = np.zeros(n + 1, dtype="<u8")
    if n:
        np.cumsum([len(e) for e in columns.extras], out=offsets[1:])
    sections: list[tuple[int, list[memoryview | bytes]]] = [
        (Section.IDS, [_join_text(columns.ids)]),
        (Section.FAMILY_NAMES, [_join_text(fam_names)]),
        (Section.FAMILY_CODES, [fam_codes.astype("<u4").tobytes()]),
        (Section.LAYER_NAMES, [_join_text(lay_names)]),
        (Section.LAYER_CODES, [lay_codes.astype("<u4").tobytes()]),
        (Section.AGENT_NAMES, [_join_text(agt_names)]),
        (Section.AGENT_CODES, [agt_codes.astype("<u4").tobytes()]),
        (Section.INSTALLER_NAMES, [_join_text(ins_names)]),
        (Section.INSTALLER_CODES, [ins_codes.astype("<u4").tobytes()]),
        (Section.FIXED, [np.ascontiguousarray(columns.fixed, dtype=FIXED_DTYPE).tobytes()]),
        (Section.EXTRAS_OFFSETS, [offsets.tobytes()]),
        (Section.EXTRAS, [b"".join(columns.extras)]),
        (Section.ANCHORS, [_bytes_view(c) for c in columns.anchors if c.size]),
    ]
    if columns.deleted_ids:
        sections.append((Section.DELETED_IDS, [_join_text(columns.deleted_ids)]))
    if columns.table_versions is not None:
        doc = sorted([fam, lay, v] for (fam, lay), v in columns.table_versions.items())
        sections.append((Section.TABLE_VERSIONS, [json.dumps(doc, ensure_ascii=False).encode()]))

    header_len = _pad(_HEADER.size + _ENTRY.size * len(sections))
    entries = []
    body: list[memoryview | bytes] = []
    offset = header_len
    for kind, parts in sections:
        length = sum(len(p) for p in parts)
        padding = _pad(length) - length
        h = xxhash.xxh3_64()
        for p in parts:
            h.update(p)
        h.update(_ZEROS[:padding])
        entries.append(_ENTRY.pack(kind, len(parts) and 0, offset, length, h.intdigest()))
        body.extend(parts)
        if padding:
            body.append(_ZEROS[:padding])
        offset += length + padding
    body_len = offset - header_len
    counts_field = len(columns.deleted_ids)
    head = bytearray(header_len)
    _HEADER.pack_into(
        head,
        0,
        SEGMENT_MAGIC,
        FORMAT_VERSION,
        0,
        header_len,
        columns.bridge_version,
        n,
        len(sections),
        counts_field,
        body_len,
        int(time.time() * 1000),
        0,
    )
    head[_HEADER.size : _HEADER.size + _ENTRY.size * len(entries)] = b"".join(entries)
    checksum = xxhash.xxh3_64_intdigest(bytes(head))
    struct.pack_into("<Q", head, 56, checksum)
    return bytes(head), body


def segment_bytes(columns: SegmentColumns) -> bytes:
    head, body = encode_segment(columns)
    return head + b"".join(body)


def peek_segment(buf: bytes, start: int) -> tuple[int, int] | None:
    """(bridge version, size) from a segment header, unverified; None if none is there.

    Only for salvage (rebuilding a store whose manifest is gone): never trust it
    for content.
    """
    if len(buf) - start < _HEADER.size:
        return None
    magic, _v, _f, header_len, version, _n, _s, _d, body_len, _c, _x = _HEADER.unpack_from(
        buf, start
    )
    if magic != SEGMENT_MAGIC or header_len % ALIGN or body_len % ALIGN or not header_len:
        return None
    return version, header_len + body_len


class Segment:
    """A decoded, verified segment. Columns are zero-copy views of the buffer."""

    __slots__ = (
        "agent_codes",
        "agent_names",
        "anchors",
        "bridge_version",
        "created_at_ms",
        "deleted_ids",
        "digests",
        "extras",
        "extras_offsets",
        "family_codes",
        "family_names",
        "fixed",
        "header_checksum",
        "ids",
        "installer_codes",
        "installer_names",
        "layer_codes",
        "layer_names",
        "n",
        "size",
        "table_versions",
    )

    n: int
    size: int
    bridge_version: int
    created_at_ms: int
    header_checksum: int
    ids: list[str]
    family_names: list[str]
    family_codes: npt.NDArray[np.uint32]
    layer_names: list[str]
    layer_codes: npt.NDArray[np.uint32]
    agent_names: list[str]
    agent_codes: npt.NDArray[np.uint32]
    installer_names: list[str]
    installer_codes: npt.NDArray[np.uint32]
    fixed: npt.NDArray[Any]
    #: The ``digest`` column of ``fixed`` (a view), looked up once per segment.
    digests: npt.NDArray[np.uint64]
    extras_offsets: npt.NDArray[np.uint64]
    extras: memoryview
    anchors: npt.NDArray[np.float32]
    deleted_ids: list[str]
    table_versions: dict[tuple[str, str], int]

    def family_of(self, row: int) -> str:
        return self.family_names[int(self.family_codes[row])]

    def digest(self, row: int) -> int:
        return int(self.digests.item(row))

    def _extras(self, row: int) -> dict[str, Any]:
        start, end = int(self.extras_offsets[row]), int(self.extras_offsets[row + 1])
        doc: dict[str, Any] = json.loads(bytes(self.extras[start:end])) if end > start else {}
        return doc

    def params_and_spec(self, row: int) -> tuple[dict[str, ParamScalar], str]:
        """The params and modification_spec of one rule, without materialising it."""
        doc = self._extras(row)
        params: dict[str, ParamScalar] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in doc.get("p", {}).items()
        }
        return params, doc.get("m", "")

    def rule(self, row: int) -> Rule:
        """Materialise one rule. Its anchor block stays a view of the buffer."""
        f = self.fixed[row]
        doc = self._extras(row)
        params: dict[str, ParamScalar] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in doc.get("p", {}).items()
        }
        counts = tuple(int(c) for c in f["counts"])
        sent = tuple(c + int(p) for c, p in zip(counts, f["padding"], strict=True))
        return Rule(
            rule_id=self.ids[row],
            family_id=self.family_names[self.family_codes[row]],
            layer=self.layer_names[self.layer_codes[row]],
            agent_id=self.agent_names[self.agent_codes[row]],
            priority=int(f["priority"]),
            enabled=bool(f["enabled"]),
            created_at_ms=int(f["created_at_ms"]),
            params=params,
            anchors=RuleAnchors(
                self.anchors[row],
                (counts[0], counts[1], counts[2], counts[3]),
                (sent[0], sent[1], sent[2], sent[3]),
            ),
            policy_type=POLICY_BY_CODE[int(f["policy"])],
            drift_threshold=float(f["drift_threshold"]),
            modification_spec=doc.get("m", ""),
            slice_weights=tuple(float(w) for w in f["slice_weights"]) if f["has_weights"] else (),
            installed_by=self.installer_names[self.installer_codes[row]],
            config_id=doc.get("c", ""),
            owner=doc.get("o", ""),
        )


def decode_segment(buf: memoryview, start: int, *, path: Path, what: str) -> Segment:
    """Verify and decode the segment at ``buf[start:]``.

    Raises :class:`CorruptStoreError` (naming ``what``, the section and the
    absolute offset); never returns a partially verified segment.
    """
    end_of_buf = len(buf)

    def corrupt(section: str, offset: int, problem: str) -> CorruptStoreError:
        return CorruptStoreError(path, f"{what} {section}", offset, problem)

    if end_of_buf - start < _HEADER.size:
        raise corrupt(
            "header", start, f"truncated: {end_of_buf - start} of {_HEADER.size} header bytes"
        )
    (
        magic,
        version,
        _flags,
        header_len,
        bridge_version,
        n,
        section_count,
        deleted_count,
        body_len,
        created_at_ms,
        checksum,
    ) = _HEADER.unpack_from(buf, start)
    if magic != SEGMENT_MAGIC:
        raise corrupt("header", start, "bad magic (not a guardrefresh segment)")
    if version not in READABLE_VERSIONS:
        # The manifest, verified first, carries the store's version; a segment of
        # another version under it is damage, not a newer writer. (Segments of
        # version 1 and 2 may share a store: a version-1 store grows version-2
        # journal segments until its next compaction.)
        raise corrupt(
            "header", start, f"format version {version}, expected one of {READABLE_VERSIONS}"
        )
    if header_len != _pad(_HEADER.size + _ENTRY.size * section_count) or section_count > 64:
        raise corrupt("header", start, "inconsistent header length")
    if end_of_buf - start < header_len:
        raise corrupt("header", start, "truncated section table")
    head = bytearray(buf[start : start + header_len])
    struct.pack_into("<Q", head, 56, 0)
    if xxhash.xxh3_64_intdigest(bytes(head)) != checksum:
        raise corrupt("header", start, "header checksum mismatch")
    size = header_len + body_len
    if end_of_buf - start < size:
        raise corrupt(
            "body", start + header_len, f"truncated: {end_of_buf - start} of {size} bytes present"
        )

    raw: dict[int, memoryview] = {}
    expected_offset = header_len
    for i in range(section_count):
        kind, _r, offset, length, sum_ = _ENTRY.unpack_from(
            buf, start + _HEADER.size + i * _ENTRY.size
        )
        name = Section.NAMES.get(kind, f"section kind {kind}")
        if offset != expected_offset or offset + _pad(length) > size:
            raise corrupt(name, start + offset, "section table out of order")
        region = buf[start + offset : start + offset + _pad(length)]
        if xxhash.xxh3_64_intdigest(region) != sum_:
            raise corrupt(name, start + offset, "checksum mismatch")
        raw[kind] = region[:length]
        expected_offset = offset + _pad(length)
    if expected_offset != size:
        raise corrupt("body", start + expected_offset, "sections do not fill the segment")

    seg = Segment()
    try:
        seg.n = n
        seg.size = size
        seg.bridge_version = bridge_version
        seg.created_at_ms = created_at_ms
        seg.header_checksum = checksum
        seg.ids = _split_text(raw[Section.IDS], n)
        seg.family_names = _split_text(raw[Section.FAMILY_NAMES], n)
        seg.layer_names = _split_text(raw[Section.LAYER_NAMES], n)
        seg.agent_names = _split_text(raw[Section.AGENT_NAMES], n)
        seg.installer_names = _split_text(raw[Section.INSTALLER_NAMES], n)
        seg.installer_codes = np.frombuffer(raw[Section.INSTALLER_CODES], dtype="<u4")
        seg.family_codes = np.frombuffer(raw[Section.FAMILY_CODES], dtype="<u4")
        seg.layer_codes = np.frombuffer(raw[Section.LAYER_CODES], dtype="<u4")
        seg.agent_codes = np.frombuffer(raw[Section.AGENT_CODES], dtype="<u4")
        seg.fixed = np.frombuffer(raw[Section.FIXED], dtype=FIXED_DTYPE)
        seg.digests = seg.fixed["digest"]
        seg.extras_offsets = np.frombuffer(raw[Section.EXTRAS_OFFSETS], dtype="<u8")
        seg.extras = raw[Section.EXTRAS]
        seg.anchors = np.frombuffer(raw[Section.ANCHORS], dtype="<f4").reshape((n, *BLOCK_SHAPE))
        seg.deleted_ids = (
            _split_text(raw[Section.DELETED_IDS], deleted_count) if deleted_count else []
        )
        seg.table_versions = {}
        if Section.TABLE_VERSIONS in raw:
            for fam, lay, ver in json.loads(bytes(raw[Section.TABLE_VERSIONS])):
                seg.table_versions[(fam, lay)] = int(ver)
    except (KeyError, ValueError, UnicodeDecodeError, TypeError) as exc:
        # Checksums matched yet the content is inconsistent: a writer bug or a
        # deliberate forgery. Still a corrupt file, never a crash.
        raise corrupt("content", start, f"inconsistent columns: {exc!r}") from None
    for label, count in (
        ("ids", len(seg.ids)),
        ("family codes", len(seg.family_codes)),
        ("layer codes", len(seg.layer_codes)),
        ("agent codes", len(seg.agent_codes)),
        ("installer codes", len(seg.installer_codes)),
        ("fixed fields", len(seg.fixed)),
        ("extras offsets", len(seg.extras_offsets) - 1),
    ):
        if count != n:
            raise corrupt(label, start, f"expected {n} entries, found {count}")
    if n:
        # Checksums prove the bytes are what a writer wrote; these prove the writer
        # wrote something this build understands (a forged or buggy file otherwise
        # fails later, one rule at a time).
        fixed = seg.fixed
        if (
            not np.isin(fixed["policy"], list(POLICY_BY_CODE)).all()
            or int((fixed["counts"].astype(np.int32) + fixed["padding"]).max()) > MAX_ANCHORS
            or int(fixed["enabled"].max()) > 1
            or int(fixed["has_weights"].max()) > 1
        ):
            raise corrupt(
                "fixed fields", start, "values out of range (policy, anchor counts or flags)"
            )
    if len(seg.deleted_ids) != deleted_count:
        raise corrupt("deleted ids", start, "count mismatch")
    if n and (
        int(seg.family_codes.max()) >= len(seg.family_names)
        or int(seg.layer_codes.max()) >= len(seg.layer_names)
        or int(seg.agent_codes.max()) >= len(seg.agent_names)
        or int(seg.installer_codes.max()) >= len(seg.installer_names)
        or int(seg.extras_offsets[-1]) != len(seg.extras)
    ):
        raise corrupt("content", start, "column references out of range")
    return seg


def iter_parts(head: bytes, body: Iterable[memoryview | bytes]) -> Iterator[memoryview | bytes]:
    yield head
    yield from body
