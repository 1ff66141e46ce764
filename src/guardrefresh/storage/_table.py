"""The merged, immutable view of warm storage at one bridge version."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from ..model import Rule
from ._segment import Segment

_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1
#: Ids indexed per step by :meth:`WarmTable.build`. Filling a dict holds the GIL for
#: the whole call: 100k ids in one call stalled the event loop ~25 ms while a
#: refresh loaded in a worker thread; steps of this size stay around 2 ms.
_INDEX_STEP = 8192


class RuleRef:
    """A handle on one rule inside a loaded segment.

    Cheap to hold (three slots), immutable in effect, and it decodes the full
    :class:`Rule` only when asked, once. This is what the hot cache stores:
    the anchor block stays in the (memory-mapped) segment, not on the heap.
    """

    __slots__ = ("_rule", "row", "segment")

    def __init__(self, segment: Segment, row: int, rule: Rule | None = None) -> None:
        self.segment = segment
        self.row = row
        self._rule = rule

    @property
    def rule_id(self) -> str:
        return self.segment.ids[self.row]

    @property
    def family_id(self) -> str:
        return self.segment.family_names[int(self.segment.family_codes[self.row])]

    @property
    def digest(self) -> int:
        return int(self.segment.digests.item(self.row))

    @property
    def rule(self) -> Rule:
        if self._rule is None:
            self._rule = self.segment.rule(self.row)
        return self._rule

    def __repr__(self) -> str:
        return f"RuleRef({self.rule_id!r}, family={self.family_id!r})"


def family_of(ref: RuleRef) -> str:
    """Key function for the hot cache's family-aware replacement."""
    return ref.family_id


@attrs.frozen
class TableStat:
    """Counts of one (family, layer) rule table."""

    family_id: str
    layer_id: str
    version: int
    rule_count: int
    global_count: int
    scoped_count: int


class WarmTable:
    """Every live rule in warm storage: a base snapshot plus journal segments.

    Immutable: installs produce a new table with :meth:`with_segment`, which
    shares the segments (and their memory maps) with this one.
    """

    __slots__ = ("_live", "_locs", "bridge_version", "generation", "segments", "table_versions")

    def __init__(
        self,
        segments: Sequence[Segment],
        locs: dict[str, int],
        live: list[npt.NDArray[np.bool_]],
        table_versions: dict[tuple[str, str], int],
        *,
        bridge_version: int,
        generation: int,
    ) -> None:
        self.segments = tuple(segments)
        self._locs = locs
        self._live = live
        self.table_versions = table_versions
        self.bridge_version = bridge_version
        self.generation = generation

    @classmethod
    def build(cls, base: Segment, journal: Sequence[Segment], *, generation: int) -> WarmTable:
        """Merge a snapshot and its journal (later segments win)."""
        ids, n = base.ids, base.n
        if len(ids) != n:
            raise ValueError(f"{len(ids)} rule ids for {n} rows")
        locs: dict[str, int] = {}
        for start in range(0, n, _INDEX_STEP):
            stop = min(n, start + _INDEX_STEP)
            locs.update(zip(ids[start:stop], range(start, stop), strict=True))
        if len(locs) != n:
            raise ValueError("duplicate rule ids in snapshot")
        table = cls(
            [base],
            locs,
            [np.ones(base.n, dtype=np.bool_)],
            dict(base.table_versions),
            bridge_version=base.bridge_version,
            generation=generation,
        )
        for seg in journal:
            table._apply(seg)
        return table

    def with_segment(self, seg: Segment) -> WarmTable:
        """A new table with ``seg`` (upserts and deletions) applied."""
        table = WarmTable(
            self.segments,
            dict(self._locs),
            list(self._live),
            dict(self.table_versions),
            bridge_version=self.bridge_version,
            generation=self.generation,
        )
        table._apply(seg)
        return table

    def _apply(self, seg: Segment) -> None:
        index = len(self.segments)
        self.segments = (*self.segments, seg)
        self._live.append(np.ones(seg.n, dtype=np.bool_))
        copied: set[int] = set()
        version = seg.bridge_version

        def kill(loc: int) -> None:
            s, row = loc >> _ROW_BITS, loc & _ROW_MASK
            if s not in copied:  # copy-on-write: older tables share these masks
                self._live[s] = self._live[s].copy()
                copied.add(s)
            self._live[s][row] = False
            old = self.segments[s]
            key = (old.family_names[old.family_codes[row]], old.layer_names[old.layer_codes[row]])
            self.table_versions[key] = max(self.table_versions.get(key, 0), version)

        for rule_id in seg.deleted_ids:
            loc = self._locs.pop(rule_id, None)
            if loc is not None:
                kill(loc)
        for row, rule_id in enumerate(seg.ids):
            loc = self._locs.get(rule_id)
            if loc is not None:
                kill(loc)
            self._locs[rule_id] = (index << _ROW_BITS) | row
            key = (seg.family_names[seg.family_codes[row]], seg.layer_names[seg.layer_codes[row]])
            self.table_versions[key] = max(self.table_versions.get(key, 0), version)
        self.bridge_version = max(self.bridge_version, version)

    # -- lookups ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self._locs)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._locs

    def ref(self, rule_id: str) -> RuleRef | None:
        loc = self._locs.get(rule_id)
        if loc is None:
            return None
        return RuleRef(self.segments[loc >> _ROW_BITS], loc & _ROW_MASK)

    def rule(self, rule_id: str) -> Rule | None:
        ref = self.ref(rule_id)
        return None if ref is None else ref.rule

    def ids(self) -> Collection[str]:
        return self._locs.keys()

    def iter_refs(self, families: Collection[str] | None = None) -> Iterator[RuleRef]:
        """Live rules, optionally of some families, in storage order."""
        for seg, live in zip(self.segments, self._live, strict=True):
            mask = live
            if families is not None:
                codes = [i for i, name in enumerate(seg.family_names) if name in families]
                if not codes:
                    continue
                mask = live & np.isin(seg.family_codes, codes)
            for row in np.flatnonzero(mask).tolist():
                yield RuleRef(seg, row)

    def live_segments(self) -> Iterator[tuple[Segment, npt.NDArray[np.bool_]]]:
        """Each segment, oldest first, with the mask of its rows that are live here.

        The masks are shared with other tables: read them, never write them.
        """
        return zip(self.segments, self._live, strict=True)

    def family_names(self) -> set[str]:
        names: set[str] = set()
        for seg, live in zip(self.segments, self._live, strict=True):
            if seg.n:
                used = np.unique(seg.family_codes[live])
                names.update(seg.family_names[c] for c in used.tolist())
        return names

    def ids_of_agent(self, agent_id: str) -> list[str]:
        """Rules scoped to ``agent_id`` or installed by it."""
        found: list[str] = []
        for seg, live in zip(self.segments, self._live, strict=True):
            agents = [i for i, a in enumerate(seg.agent_names) if a == agent_id]
            installers = [i for i, a in enumerate(seg.installer_names) if a == agent_id]
            if not agents and not installers:
                continue
            mask = np.isin(seg.agent_codes, agents) | np.isin(seg.installer_codes, installers)
            found.extend(seg.ids[row] for row in np.flatnonzero(live & mask).tolist())
        return found

    def content_digest(self) -> int:
        """The sum, modulo 2**64, of every live rule's 64-bit digest.

        Order-independent, so two stores holding the same rules agree whatever their
        segments; any changed, missing or extra rule changes it (a fleet replica
        compares it with the engine's, see ``guardrefresh.replication``).
        """
        total = 0
        for seg, live in zip(self.segments, self._live, strict=True):
            if seg.n:
                # numpy's uint64 sum wraps: it is already taken modulo 2**64.
                total += int(seg.digests[live].sum(dtype=np.uint64))
        return total % 2**64

    def table_stats(self) -> list[TableStat]:
        """One row per (family, layer), sorted, counting live rules."""
        counts: dict[tuple[str, str], list[int]] = {}
        for seg, live in zip(self.segments, self._live, strict=True):
            if not seg.n or not live.any():
                continue
            nl = len(seg.layer_names)
            keys = seg.family_codes.astype(np.int64) * nl + seg.layer_codes
            empty = [i for i, a in enumerate(seg.agent_names) if a == ""]
            is_global = np.isin(seg.agent_codes, empty)
            total = np.bincount(keys[live], minlength=len(seg.family_names) * nl)
            glob = np.bincount(keys[live & is_global], minlength=len(seg.family_names) * nl)
            for key in np.flatnonzero(total).tolist():
                name = (seg.family_names[key // nl], seg.layer_names[key % nl])
                acc = counts.setdefault(name, [0, 0])
                acc[0] += int(total[key])
                acc[1] += int(glob[key])
        return [
            TableStat(f, lay, self.table_versions.get((f, lay), 0), n, g, n - g)
            for (f, lay), (n, g) in sorted(counts.items())
        ]
