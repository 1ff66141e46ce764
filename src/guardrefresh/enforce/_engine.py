"""The Enforce decision engine: evaluation sets kept in step with the bridge."""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy.typing as npt
import trio

from ..bridge import Bridge
from ..storage import Segment, WarmTable
from ._group import Group, GroupKey, group_rows
from ._params import rule_scoring
from ._part import RuleMeta, normalised_intent, rule_meta
from ._result import EnforcementResult
from ._set import EvalSet

logger = logging.getLogger(__name__)

#: Default memory budget for prepared groups and evaluation sets (see EnforcementEngine).
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
#: Rough per-rule cost of an evaluation set's own columns.
_SET_BYTES_PER_RULE = 200


class EnforcementEngine:
    """Decides Enforce requests against the rules of a :class:`Bridge`.

    Synchronous and single-threaded: it runs on the Trio thread, like the bridge's
    reads, and never awaits. Rules are read from the bridge's warm table (the
    authoritative view of every live rule), so a rule evicted from the hot cache is
    still evaluated; the rules a decision reads are then marked used in the hot cache
    (hits move up, misses are promoted), through :meth:`Bridge.mark_used`.

    Prepared data: per (agent, layer) *group*, the enabled rules' anchors normalised
    once into contiguous float32 arrays, with the columns a decision needs; per
    (tenant, layer) *evaluation set*, the union of its four groups in evaluation
    order. Both are built on first use and kept while the bridge version stays the
    same. When it moves, journal segments appended since (installs, removals) are
    patched into the groups already built; anything else (a new storage generation
    with new content) drops them all, to be rebuilt on demand. Their memory is held
    under ``cache_bytes`` (least recently used first out; the set being evaluated is
    always kept, however large).
    """

    def __init__(self, bridge: Bridge, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self._bridge = bridge
        self._cache_bytes = cache_bytes
        self._groups: OrderedDict[GroupKey, Group] = OrderedDict()
        self._sets: OrderedDict[tuple[str, str], EvalSet] = OrderedDict()
        self._meta: dict[int, RuleMeta] = {}
        self._version = -1
        self._generation = -1

    def evaluate(
        self,
        vector: npt.ArrayLike,
        *,
        tenant_id: str,
        layer: str | None,
        drift_score: float,
    ) -> EnforcementResult:
        """Decide the intent ``vector`` (128 floats: action, resource, data, risk slices
        of 32) for ``tenant_id`` at ``layer`` (None or "" for no layer).

        Raises ValueError if ``vector`` is not 128 finite numbers; never raises for
        anything a stored rule holds (a rule that cannot be scored gives a fail-closed
        DENY whose ``error`` names it).
        """
        intent = normalised_intent(vector)
        eval_set = self.evaluation_set(tenant_id, layer)
        result, reached = eval_set.evaluate(intent, float(drift_score))
        if reached:
            self._bridge.mark_used(reached)
        return result

    def is_ready(self, tenant_id: str, layer: str | None) -> bool:
        """Whether :meth:`evaluate` for this scope has its groups built (at most a patch
        from recent writes is left to do, which is cheap)."""
        table = self._bridge.table
        if table.bridge_version != self._version and (
            table.generation != self._generation or table.bridge_version < self._version
        ):
            return False  # everything would be rebuilt
        return all(key in self._groups for key in _group_keys(tenant_id, layer or ""))

    async def prepare(self, tenant_id: str, layer: str | None) -> None:
        """Build what :meth:`evaluate` for this scope needs, in a worker thread.

        Building a group decodes the params and normalises the anchors of all its rules
        (about 15 ms per thousand rules with full anchors, far more under load): call
        this first when :meth:`is_ready` says no, so that the event loop does not stall.
        Does nothing when ready. If the rules change while it builds, it tries again a
        few times and otherwise leaves the rest to :meth:`evaluate`. Cancellation
        abandons the build; nothing is changed.
        """
        for _attempt in range(3):
            table = self._bridge.table
            self._sync(table)
            missing = [k for k in _group_keys(tenant_id, layer or "") if k not in self._groups]
            if not missing:
                return
            built, fresh = await trio.to_thread.run_sync(
                _build_groups, table, missing, self._meta, abandon_on_cancel=True
            )
            # Back on the event loop: adopt them only if the rules did not move meanwhile.
            self._sync(self._bridge.table)
            if self._version != table.bridge_version or self._generation != table.generation:
                continue
            self._meta.update(fresh)
            for group in built:
                self._groups.setdefault(group.key, group)

    # -- prepared data -----------------------------------------------------------------

    def evaluation_set(self, tenant_id: str, layer: str | None) -> EvalSet:
        """The up-to-date evaluation set of ``tenant_id`` at ``layer`` (built if needed)."""
        self._sync(self._bridge.table)
        layer = layer or ""
        key = (tenant_id, layer)
        eval_set = self._sets.get(key)
        if (
            eval_set is not None
            and eval_set.valid
            and all(self._groups.get(g.key) is g for g in eval_set.groups)
        ):
            self._sets.move_to_end(key)
            for group in eval_set.groups:
                self._groups.move_to_end(group.key)
            return eval_set
        groups = [self._group(group_key) for group_key in _group_keys(tenant_id, layer)]
        eval_set = EvalSet(groups)
        self._sets[key] = eval_set
        self._sets.move_to_end(key)
        self._trim(eval_set)
        return eval_set

    def _group(self, key: GroupKey) -> Group:
        group = self._groups.get(key)
        if group is None:
            group = Group.build(self._bridge.table, key, self._meta_of)
            self._groups[key] = group
        self._groups.move_to_end(key)
        return group

    def _meta_of(self, segment: Segment, row: int) -> RuleMeta:
        # Keyed by the rule's content digest: stays right across compactions and reloads,
        # and spares the JSON decoding of params when a group is rebuilt.
        digest = segment.digest(row)
        meta = self._meta.get(digest)
        if meta is None:
            params, spec = segment.params_and_spec(row)
            meta = rule_meta(rule_scoring(segment.ids[row], params), spec)
            self._meta[digest] = meta
        return meta

    def _sync(self, table: WarmTable) -> None:
        """Bring the groups to the table's bridge version."""
        version = table.bridge_version
        if version == self._version:
            return
        if table.generation == self._generation and version > self._version:
            self._patch(table)
        else:
            self._groups.clear()
            self._sets.clear()
            self._meta.clear()
        self._version = version
        self._generation = table.generation

    def _patch(self, table: WarmTable) -> None:
        since = self._version
        for segment, live in table.live_segments():
            if segment.bridge_version <= since:
                continue
            # Removed, and replaced, rules leave the groups; the segment's rows that are
            # still live (and enabled) join the groups that are built.
            touched = [*segment.deleted_ids, *segment.ids]
            for group in self._groups.values():
                group.kill(touched)
            for key, group in self._groups.items():
                rows = group_rows(segment, live, key)
                if len(rows):
                    group.add([(segment, rows)], self._meta_of)
        logger.debug(
            "Patched %d enforcement groups to bridge version %d",
            len(self._groups),
            table.bridge_version,
        )

    def _trim(self, keep: EvalSet) -> None:
        """Drop least recently used sets, then groups, until within the memory budget."""
        kept = {group.key for group in keep.groups}

        def used() -> int:
            return sum(g.nbytes for g in self._groups.values()) + _SET_BYTES_PER_RULE * sum(
                len(s) for s in self._sets.values()
            )

        total = used()
        if total <= self._cache_bytes:
            return
        for key in list(self._sets):
            if total <= self._cache_bytes:
                break
            if self._sets[key] is not keep:
                total -= _SET_BYTES_PER_RULE * len(self._sets.pop(key))
        dropped = False
        for key in list(self._groups):
            if total <= self._cache_bytes:
                break
            if key not in kept:
                total -= self._groups.pop(key).nbytes
                dropped = True
        if dropped:
            # Sets over a dropped group would be rebuilt anyway; do not let them pin it.
            for key, eval_set in list(self._sets.items()):
                if any(self._groups.get(g.key) is not g for g in eval_set.groups):
                    del self._sets[key]
        if len(self._meta) > 4 * sum(g.live_count for g in self._groups.values()) + 1024:
            self._meta.clear()

    # -- introspection -------------------------------------------------------------------

    @property
    def cached_bytes(self) -> int:
        """Approximate memory held by prepared groups and sets."""
        return sum(g.nbytes for g in self._groups.values()) + _SET_BYTES_PER_RULE * sum(
            len(s) for s in self._sets.values()
        )


def _group_keys(tenant_id: str, layer: str) -> list[GroupKey]:
    """The groups whose union is the scope of (tenant, layer): the tenant's rules and the
    global ones, each without a layer and at the layer."""
    return list(dict.fromkeys([(tenant_id, ""), (tenant_id, layer), ("", ""), ("", layer)]))


def _build_groups(
    table: WarmTable, keys: list[GroupKey], known: dict[int, RuleMeta]
) -> tuple[list[Group], dict[int, RuleMeta]]:
    """Worker thread: build groups from an immutable table. ``known`` is only read; the
    metadata decoded here is returned for the event loop to keep."""
    fresh: dict[int, RuleMeta] = {}

    def meta_of(segment: Segment, row: int) -> RuleMeta:
        digest = segment.digest(row)
        meta = known.get(digest) or fresh.get(digest)
        if meta is None:
            params, spec = segment.params_and_spec(row)
            meta = fresh[digest] = rule_meta(rule_scoring(segment.ids[row], params), spec)
        return meta

    return [Group.build(table, key, meta_of) for key in keys], fresh
