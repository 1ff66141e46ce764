"""How a rule is encoded in the fleet database: the warm store's own record of it.

``encoded`` holds, for one rule, exactly what a warm-storage segment holds for it:

    fixed     56 bytes   the fixed record (priority, policy, drift threshold, slice
                         weights, anchor counts and padding, and the rule's 64-bit
                         digest), ``guardrefresh.storage.FIXED_DTYPE``
    anchors   8192 bytes the float32 anchor block, 4 slots x 16 vectors x 32
    extras    the rest   params, modification_spec, config id and owner (JSON)

and the ids and names (rule id, agent, installer, family, layer) are columns of the
row. Why not the wire's ``RuleInstance``: it lacks the provenance the ownership rule
needs (who installed a rule), and parsing 2,048 floats per rule in betterproto2 costs
about a millisecond, two minutes for a resync of 100,000 rules. Why not rules JSON:
floats as text triple the size and parse slower still. This record is lossless by
construction (the warm store round-trips every field, padding and -0.0 included), a
page of them becomes one journal segment with two ``np.frombuffer`` calls and no
per-rule objects, and it carries the digest the reconciliation compares. ``format``
(a column) names the layout, so a replica of an older build refuses rows it cannot
read instead of misreading them.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from ..model import BLOCK_BYTES, BLOCK_SHAPE, Rule
from ..storage import FIXED_DTYPE, SegmentColumns
from ._errors import UnsupportedRecordError

__all__ = ["RECORD_FORMAT", "EncodedRule", "PageDecoder", "encode_rules", "signed64", "unsigned64"]

#: The layout above. A new layout gets a new number; readers list what they read.
RECORD_FORMAT = 1
_FIXED = FIXED_DTYPE.itemsize
_HEAD = _FIXED + BLOCK_BYTES


def signed64(value: int) -> int:
    """An unsigned 64-bit digest as PostgreSQL's signed bigint."""
    return value - 2**64 if value >= 2**63 else value


def unsigned64(value: int) -> int:
    return value % 2**64


@attrs.frozen
class EncodedRule:
    """One rule as it goes into the rules table."""

    rule_id: str
    agent_id: str
    installed_by: str
    family_id: str
    layer: str
    digest: int  # signed
    encoded: bytes


def encode_rules(rules: Sequence[Rule]) -> list[EncodedRule]:
    """Encode validated rules (CPU work: call from a worker thread)."""
    columns = SegmentColumns.from_rules(rules, bridge_version=0)
    fixed = columns.fixed.tobytes()
    anchors = columns.anchors[0] if columns.anchors else np.zeros((0, *BLOCK_SHAPE), "<f4")
    out = []
    for i, rule in enumerate(rules):
        record = b"".join(
            (
                fixed[i * _FIXED : (i + 1) * _FIXED],
                np.ascontiguousarray(anchors[i], dtype="<f4").tobytes(),
                columns.extras[i],
            )
        )
        out.append(
            EncodedRule(
                rule.rule_id,
                rule.agent_id,
                rule.installed_by,
                rule.family_id,
                rule.layer,
                signed64(int(columns.fixed["digest"][i])),
                record,
            )
        )
    return out


class PageDecoder:
    """Gathers database rows into the columns of one warm-storage segment.

    :meth:`add` takes rows page by page (each row a mapping with ``rule_id``,
    ``agent_id``, ``installed_by``, ``family_id``, ``layer``, ``format`` and
    ``encoded``), so a resync of 100,000 rules never holds more than a page of row
    bytes next to the columns. Raises :class:`UnsupportedRecordError` for a row of a
    format this build does not read or of a wrong size.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._families: list[str] = []
        self._layers: list[str] = []
        self._agents: list[str] = []
        self._installers: list[str] = []
        self._fixed: list[np.ndarray] = []
        self._extras: list[bytes] = []
        self._anchors: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, rows: Sequence[object]) -> None:
        if not rows:
            return
        records: list[bytes] = []
        for row in rows:
            r: dict[str, object] = row  # type: ignore[assignment]  # asyncpg Record
            record = r["encoded"]
            if r["format"] != RECORD_FORMAT:
                raise UnsupportedRecordError(
                    f"rule {r['rule_id']!r} in the fleet database has record format "
                    f"{r['format']}; this build reads format {RECORD_FORMAT}: upgrade it"
                )
            if not isinstance(record, bytes) or len(record) < _HEAD:
                raise UnsupportedRecordError(
                    f"rule {r['rule_id']!r} in the fleet database has a truncated record"
                )
            records.append(record)
            self.ids.append(str(r["rule_id"]))
            self._families.append(str(r["family_id"]))
            self._layers.append(str(r["layer"]))
            self._agents.append(str(r["agent_id"]))
            self._installers.append(str(r["installed_by"]))
        views = [memoryview(record) for record in records]
        self._fixed.append(np.frombuffer(b"".join(v[:_FIXED] for v in views), dtype=FIXED_DTYPE))
        self._anchors.append(
            np.frombuffer(b"".join(v[_FIXED:_HEAD] for v in views), dtype="<f4").reshape(
                (len(views), *BLOCK_SHAPE)
            )
        )
        self._extras.extend(bytes(v[_HEAD:]) for v in views)

    def columns(self, *, bridge_version: int, deleted_ids: Sequence[str] = ()) -> SegmentColumns:
        """The rules gathered so far (and ``deleted_ids``) as one segment's columns."""
        fixed = np.concatenate(self._fixed) if self._fixed else np.zeros(0, dtype=FIXED_DTYPE)
        return SegmentColumns(
            ids=list(self.ids),
            families=list(self._families),
            layers=list(self._layers),
            agents=list(self._agents),
            installers=list(self._installers),
            fixed=fixed,
            extras=list(self._extras),
            anchors=list(self._anchors),
            bridge_version=bridge_version,
            deleted_ids=deleted_ids,
        )

    def digest(self) -> int:
        """Sum modulo 2**64 of the gathered rules' digests (see WarmTable.content_digest)."""
        return sum(int(f["digest"].sum(dtype=np.uint64)) for f in self._fixed) % 2**64
