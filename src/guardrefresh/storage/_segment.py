"""Reading a segment: verify every checksum, then expose the columns as zero-copy views.

The layout is described in ``_layout``; segments are written by ``_encode``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from ..model import BLOCK_SHAPE, MAX_ANCHORS, POLICY_BY_CODE, ParamScalar, Rule, RuleAnchors
from ._errors import CorruptStoreError
from ._layout import (
    ALIGN,
    FIXED_DTYPE,
    HEADER,
    READABLE_VERSIONS,
    SECTION_ENTRY,
    SEGMENT_MAGIC,
    Section,
    pad,
    split_text,
)

__all__ = ["Segment", "decode_segment", "peek_segment"]


def peek_segment(buf: bytes, start: int) -> tuple[int, int] | None:
    """(bridge version, size) from a segment header, unverified; None if none is there.

    Only for salvage (rebuilding a store whose manifest is gone): never trust it
    for content.
    """
    if len(buf) - start < HEADER.size:
        return None
    magic, _v, _f, header_len, version, _n, _s, _d, body_len, _c, _x = HEADER.unpack_from(
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

    if end_of_buf - start < HEADER.size:
        raise corrupt(
            "header", start, f"truncated: {end_of_buf - start} of {HEADER.size} header bytes"
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
    ) = HEADER.unpack_from(buf, start)
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
    if header_len != pad(HEADER.size + SECTION_ENTRY.size * section_count) or section_count > 64:
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
        kind, _r, offset, length, sum_ = SECTION_ENTRY.unpack_from(
            buf, start + HEADER.size + i * SECTION_ENTRY.size
        )
        name = Section.NAMES.get(kind, f"section kind {kind}")
        if offset != expected_offset or offset + pad(length) > size:
            raise corrupt(name, start + offset, "section table out of order")
        region = buf[start + offset : start + offset + pad(length)]
        if xxhash.xxh3_64_intdigest(region) != sum_:
            raise corrupt(name, start + offset, "checksum mismatch")
        raw[kind] = region[:length]
        expected_offset = offset + pad(length)
    if expected_offset != size:
        raise corrupt("body", start + expected_offset, "sections do not fill the segment")

    seg = Segment()
    try:
        seg.n = n
        seg.size = size
        seg.bridge_version = bridge_version
        seg.created_at_ms = created_at_ms
        seg.header_checksum = checksum
        seg.ids = split_text(raw[Section.IDS], n)
        seg.family_names = split_text(raw[Section.FAMILY_NAMES], n)
        seg.layer_names = split_text(raw[Section.LAYER_NAMES], n)
        seg.agent_names = split_text(raw[Section.AGENT_NAMES], n)
        seg.installer_names = split_text(raw[Section.INSTALLER_NAMES], n)
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
            split_text(raw[Section.DELETED_IDS], deleted_count) if deleted_count else []
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
