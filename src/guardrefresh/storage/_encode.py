"""Writing a segment: rules to columns, columns to checksummed, aligned bytes."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from ..model import BLOCK_SHAPE, POLICY_CODES, Rule
from ._layout import (
    ALIGN,
    FIXED_DTYPE,
    FORMAT_VERSION,
    HEADER,
    SECTION_ENTRY,
    SEGMENT_MAGIC,
    Section,
    join_text,
    pad,
)

__all__ = ["SegmentColumns", "encode_extras", "encode_segment", "rule_digest", "segment_bytes"]

_ZEROS = bytes(ALIGN)


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
        join_text((rule.rule_id, rule.family_id, rule.layer, rule.agent_id, rule.installed_by))
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
        (Section.IDS, [join_text(columns.ids)]),
        (Section.FAMILY_NAMES, [join_text(fam_names)]),
        (Section.FAMILY_CODES, [fam_codes.astype("<u4").tobytes()]),
        (Section.LAYER_NAMES, [join_text(lay_names)]),
        (Section.LAYER_CODES, [lay_codes.astype("<u4").tobytes()]),
        (Section.AGENT_NAMES, [join_text(agt_names)]),
        (Section.AGENT_CODES, [agt_codes.astype("<u4").tobytes()]),
        (Section.INSTALLER_NAMES, [join_text(ins_names)]),
        (Section.INSTALLER_CODES, [ins_codes.astype("<u4").tobytes()]),
        (Section.FIXED, [np.ascontiguousarray(columns.fixed, dtype=FIXED_DTYPE).tobytes()]),
        (Section.EXTRAS_OFFSETS, [offsets.tobytes()]),
        (Section.EXTRAS, [b"".join(columns.extras)]),
        (Section.ANCHORS, [_bytes_view(c) for c in columns.anchors if c.size]),
    ]
    if columns.deleted_ids:
        sections.append((Section.DELETED_IDS, [join_text(columns.deleted_ids)]))
    if columns.table_versions is not None:
        doc = sorted([fam, lay, v] for (fam, lay), v in columns.table_versions.items())
        sections.append((Section.TABLE_VERSIONS, [json.dumps(doc, ensure_ascii=False).encode()]))

    header_len = pad(HEADER.size + SECTION_ENTRY.size * len(sections))
    entries = []
    body: list[memoryview | bytes] = []
    offset = header_len
    for kind, parts in sections:
        length = sum(len(p) for p in parts)
        padding = pad(length) - length
        h = xxhash.xxh3_64()
        for p in parts:
            h.update(p)
        h.update(_ZEROS[:padding])
        entries.append(SECTION_ENTRY.pack(kind, len(parts) and 0, offset, length, h.intdigest()))
        body.extend(parts)
        if padding:
            body.append(_ZEROS[:padding])
        offset += length + padding
    body_len = offset - header_len
    counts_field = len(columns.deleted_ids)
    head = bytearray(header_len)
    HEADER.pack_into(
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
    head[HEADER.size : HEADER.size + SECTION_ENTRY.size * len(entries)] = b"".join(entries)
    checksum = xxhash.xxh3_64_intdigest(bytes(head))
    struct.pack_into("<Q", head, 56, checksum)
    return bytes(head), body


def segment_bytes(columns: SegmentColumns) -> bytes:
    head, body = encode_segment(columns)
    return head + b"".join(body)
