"""Compaction: when to fold the journal into a new snapshot, and the rows that go in it."""

from __future__ import annotations

import numpy as np

from ._encode import SegmentColumns
from ._layout import FIXED_DTYPE
from ._manifest import JOURNAL_HEADER_SIZE, Manifest
from ._table import WarmTable

#: Compact once the journal is this large and at least a quarter of the snapshot.
COMPACT_MIN_BYTES = 4 * 1024 * 1024
COMPACT_RATIO = 0.25


def wants_compaction(m: Manifest) -> bool:
    """Whether the journal ``m`` describes has grown enough to be worth folding in."""
    journal = m.journal_size - JOURNAL_HEADER_SIZE
    return journal >= COMPACT_MIN_BYTES and journal >= COMPACT_RATIO * m.snapshot_size


def live_columns(table: WarmTable) -> SegmentColumns:
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
