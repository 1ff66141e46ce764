"""A group: the enabled live rules of one (agent, layer) pair, kept ready to score.

Evaluation sets are unions of groups: the set for tenant T at layer L is the groups
(T, ""), (T, L), ("", "") and ("", L). Global rules are therefore held once, not once
per tenant. A group is built from the warm table's columns and then patched from the
journal segments that later writes append (see :meth:`Group.apply`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from ..storage import Segment, WarmTable
from ._part import MetaLookup, Part

GroupKey = tuple[str, str]

#: More parts than this and the small ones are merged into one.
MAX_PARTS = 4


def group_rows(
    segment: Segment, live: npt.NDArray[np.bool_], key: GroupKey
) -> npt.NDArray[np.intp]:
    """Rows of ``segment`` that are live, enabled and belong to group ``key``."""
    agent, layer = key
    try:
        agent_code = segment.agent_names.index(agent)
        layer_code = segment.layer_names.index(layer)
    except ValueError:
        return np.zeros(0, dtype=np.intp)
    mask = (
        live
        & (segment.agent_codes == agent_code)
        & (segment.layer_codes == layer_code)
        & (segment.fixed["enabled"] == 1)
    )
    return np.flatnonzero(mask)


class Group:
    """The rules of one (agent, layer) pair as scoring parts, plus where each rule is."""

    __slots__ = ("epoch", "key", "parts", "where")

    def __init__(self, key: GroupKey, parts: list[Part]) -> None:
        self.key = key
        self.parts = parts
        #: Rule id -> (part index, row) of its live row.
        self.where: dict[str, tuple[int, int]] = {}
        for p, part in enumerate(parts):
            self.where.update((rule_id, (p, row)) for row, rule_id in enumerate(part.cols.ids))
        #: Bumped on every change, so evaluation sets know to re-assemble.
        self.epoch = 0

    @classmethod
    def build(cls, table: WarmTable, key: GroupKey, meta_of: MetaLookup) -> Group:
        """Everything of ``key`` in ``table``, as one part."""
        picks = [(seg, group_rows(seg, live, key)) for seg, live in table.live_segments()]
        return cls(key, [Part.from_rows(picks, meta_of)])

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts) + 1024

    @property
    def live_count(self) -> int:
        return len(self.where)

    def kill(self, rule_ids: Iterable[str]) -> None:
        """Mark these rules dead (removed, or replaced by a newer version)."""
        changed = False
        for rule_id in rule_ids:
            found = self.where.pop(rule_id, None)
            if found is not None:
                self.parts[found[0]].alive[found[1]] = False
                changed = True
        if changed:
            self.epoch += 1

    def add(
        self, picks: Sequence[tuple[Segment, npt.NDArray[np.intp]]], meta_of: MetaLookup
    ) -> None:
        """Add the rules at these rows (none of them may be in the group already)."""
        part = Part.from_rows(picks, meta_of)
        if not part.n:
            return
        index = len(self.parts)
        self.parts.append(part)
        self.where.update((rule_id, (index, row)) for row, rule_id in enumerate(part.cols.ids))
        self.epoch += 1
        self._tidy()

    def _tidy(self) -> None:
        total = sum(part.n for part in self.parts)
        if 2 * self.live_count < total:
            # Mostly dead rows: rebuild as one part.
            self._replace(list(range(len(self.parts))))
        elif len(self.parts) > MAX_PARTS:
            largest = max(range(len(self.parts)), key=lambda p: self.parts[p].n)
            self._replace([p for p in range(len(self.parts)) if p != largest])

    def _replace(self, merged: list[int]) -> None:
        keep = [part for p, part in enumerate(self.parts) if p not in merged]
        keep.append(Part.merge([self.parts[p] for p in merged]))
        self.parts = [part for part in keep if part.n]
        self.where = {}
        for p, part in enumerate(self.parts):
            alive = part.alive
            self.where.update(
                (rule_id, (p, row)) for row, rule_id in enumerate(part.cols.ids) if alive[row]
            )
        self.epoch += 1
