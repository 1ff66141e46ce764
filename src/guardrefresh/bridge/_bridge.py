"""The bridge: one owner for the hot cache, the warm store and the rule index."""

from __future__ import annotations

import enum
import functools
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import trio
import trio_util

from ..cache import HotCache
from ..model import Rule, RuleValidationError, clip, echo
from ..storage import (
    CorruptStoreError,
    RuleRef,
    SegmentColumns,
    TableStat,
    WarmStore,
    WarmTable,
    family_of,
)
from ._errors import RuleConflictError, RuleNotFoundError, TooManyRulesError

logger = logging.getLogger(__name__)

#: Most rules in the hot cache, and most rules one install may carry, unless told
#: otherwise; also the defaults of the service's ``[storage] hot_capacity`` and
#: ``[server] max_rules_per_install`` settings, which are declared with these.
DEFAULT_HOT_CAPACITY = 10_000
DEFAULT_MAX_RULES_PER_INSTALL = 10_000
#: How counts by layer name rules without a layer (the original data plane's label).
GLOBAL_LAYER = "global"


class Tier(enum.StrEnum):
    """Which tier answered a lookup."""

    HOT = "hot"
    WARM = "warm"


@attrs.frozen
class InstallResult:
    rules_installed: int
    rules_by_layer: dict[str, int]
    bridge_version: int


@attrs.frozen
class RuleStats:
    bridge_version: int
    tables: list[TableStat]

    @property
    def total_rules(self) -> int:
        return sum(t.rule_count for t in self.tables)

    @property
    def total_global_rules(self) -> int:
        return sum(t.global_count for t in self.tables)

    @property
    def total_scoped_rules(self) -> int:
        return sum(t.scoped_count for t in self.tables)


class Bridge:
    """Owns the hot cache, the warm store and the current warm table.

    All methods run on the Trio thread. Reads (:meth:`get_rule`,
    :meth:`rule_stats`) are synchronous and never await, so asyncio-side gRPC
    handlers on the same thread may call them directly. Writes are serialised
    by :attr:`write_lock`, run the blocking store work in a worker thread,
    and are durable in warm storage before they become visible in the hot
    cache. A write whose caller is cancelled still completes: the disk and
    the in-memory view never disagree.
    """

    def __init__(
        self,
        store: WarmStore,
        table: WarmTable,
        *,
        hot_capacity: int = DEFAULT_HOT_CAPACITY,
        max_rules_per_install: int = DEFAULT_MAX_RULES_PER_INSTALL,
    ) -> None:
        self.store = store
        self.table = table
        self.cache: HotCache[RuleRef] = HotCache(hot_capacity, family_of=family_of)
        self.max_rules_per_install = max_rules_per_install
        self.write_lock = trio.Lock()
        #: Counts committed writes; the background compactor waits on its transitions.
        self.writes = trio_util.AsyncValue(0)

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        hot_capacity: int = DEFAULT_HOT_CAPACITY,
        max_rules_per_install: int = DEFAULT_MAX_RULES_PER_INSTALL,
        make_dirs: bool = False,
        rebuild_damaged: bool = False,
    ) -> Bridge:
        """Open (or create) warm storage at ``path``. The hot cache starts empty:
        the warm-up refresh fills it. Raises the storage errors of
        :meth:`WarmStore.open`.

        With ``rebuild_damaged`` (a fleet replica: its store is a cache of the
        database), a store that fails verification is moved aside into
        ``<path>.damaged/`` and an empty one started instead, with one warning;
        replication then fills it.
        """
        store = WarmStore(path)
        try:
            table = await trio.to_thread.run_sync(lambda: store.open(make_dirs=make_dirs))
        except CorruptStoreError as exc:
            if not rebuild_damaged:
                raise
            aside = await trio.to_thread.run_sync(store.set_aside_damaged)
            logger.warning(
                "Warm storage is damaged (%s); moved its files to %s and starting empty: "
                "fleet replication rebuilds it from the database",
                exc,
                aside,
            )
            table = await trio.to_thread.run_sync(lambda: store.open(make_dirs=make_dirs))
        logger.info(
            "Opened warm storage %s: %d rules, bridge version %d",
            path,
            len(table),
            table.bridge_version,
        )
        return cls(
            store, table, hot_capacity=hot_capacity, max_rules_per_install=max_rules_per_install
        )

    def close(self) -> None:
        self.store.close()

    @property
    def bridge_version(self) -> int:
        return self.table.bridge_version

    # -- reads ---------------------------------------------------------------
    def get_rule(self, rule_id: str) -> tuple[Rule, Tier] | None:
        """Tiered lookup: hot cache (marks use), then warm storage (promoted into hot)."""
        ref = self.cache.get_and_mark(rule_id)
        if ref is not None:
            return ref.rule, Tier.HOT
        ref = self.table.ref(rule_id)
        if ref is None:
            return None
        self.cache.insert(rule_id, ref)
        return ref.rule, Tier.WARM

    def mark_used(self, rule_ids: Iterable[str]) -> int:
        """Record that a decision read these rules (all must be live in warm storage).

        Hot ones become the most recently used, in the order given; the others are
        promoted from warm storage into the hot cache (which may evict its least
        recently used entries). Returns how many were promoted.
        """
        missing = self.cache.mark_many(rule_ids)
        if not missing:
            return 0
        table = self.table
        refs = [(key, ref) for key in missing if (ref := table.ref(key)) is not None]
        self.cache.insert_many(refs)
        return len(refs)

    def rule_stats(self) -> RuleStats:
        return RuleStats(self.table.bridge_version, self.table.table_stats())

    # -- writes --------------------------------------------------------------
    async def install_rules(
        self, agent_id: str, rules: Sequence[Rule], *, config_id: str = "", owner: str = ""
    ) -> InstallResult:
        """Validated, all-or-nothing, idempotent upsert of ``rules`` for ``agent_id``.

        Raises :class:`RuleValidationError` (bad rule, duplicate id, wrong
        agent), :class:`TooManyRulesError`, :class:`RuleConflictError` (a rule
        id that belongs to another agent) or a storage error; in every case
        nothing was stored.
        """
        stamped = await self.prepare_install(agent_id, rules, config_id=config_id, owner=owner)
        async with self.write_lock:
            for rule in stamped:
                existing = self.table.ref(rule.rule_id)
                if existing is not None and not self._belongs(existing, agent_id):
                    raise RuleConflictError(
                        f"rule {echo(rule.rule_id)} belongs to another agent; remove it there first"
                    )
            if stamped:
                await self._commit(stamped, ())
        by_layer = Counter(rule.layer or GLOBAL_LAYER for rule in stamped)
        logger.info(
            "Installed %d rules for agent %s (config %s): bridge version %d",
            len(stamped),
            echo(agent_id),
            echo(config_id),
            self.table.bridge_version,
            extra={
                "rules": len(stamped),
                "agent_id": agent_id,
                "bridge_version": self.table.bridge_version,
            },
        )
        return InstallResult(len(stamped), dict(by_layer), self.table.bridge_version)

    async def prepare_install(
        self, agent_id: str, rules: Sequence[Rule], *, config_id: str = "", owner: str = ""
    ) -> list[Rule]:
        """Validate an install request and stamp its provenance; store nothing.

        The checks :meth:`install_rules` makes before it writes (the request's size,
        every rule, duplicate ids, the rules' agent), with the same errors; a fleet
        replica runs them before it writes to the fleet's engine.
        """
        if len(rules) > self.max_rules_per_install:
            raise TooManyRulesError(
                f"{len(rules)} rules in one request; the limit is {self.max_rules_per_install}"
            )
        # Validation walks every anchor: keep it off the event loop.
        return await trio.to_thread.run_sync(
            _stamped_batch, rules, agent_id, config_id, owner, abandon_on_cancel=True
        )

    async def remove_policy(self, agent_id: str, policy_id: str) -> int:
        """Remove rule ``policy_id`` of ``agent_id``.

        Raises :class:`RuleNotFoundError` when there is no such rule and
        :class:`RuleConflictError` when it belongs to another agent (messages as
        the original data plane worded them).
        """
        async with self.write_lock:
            ref = self.table.ref(policy_id)
            if ref is None:
                raise RuleNotFoundError(f"Policy not found: {clip(policy_id)}")
            if not self._belongs(ref, agent_id):
                raise RuleConflictError(
                    f"Policy {clip(policy_id)} does not belong to agent {clip(agent_id)}"
                )
            await self._commit((), (policy_id,))
        logger.info(
            "Removed rule %s of agent %s: bridge version %d",
            echo(policy_id),
            echo(agent_id),
            self.bridge_version,
            extra={"rules": 1, "agent_id": agent_id, "bridge_version": self.bridge_version},
        )
        return 1

    async def remove_agent_rules(self, agent_id: str) -> int:
        """Remove every rule scoped to or installed by ``agent_id``; returns how many."""
        async with self.write_lock:
            ids = self.table.ids_of_agent(agent_id)
            if ids:
                await self._commit((), ids)
        logger.info(
            "Removed %d rules of agent %s: bridge version %d",
            len(ids),
            echo(agent_id),
            self.bridge_version,
            extra={"rules": len(ids), "agent_id": agent_id, "bridge_version": self.bridge_version},
        )
        return len(ids)

    @staticmethod
    def _belongs(ref: RuleRef, agent_id: str) -> bool:
        seg, row = ref.segment, ref.row
        return agent_id in (
            seg.agent_names[seg.agent_codes[row]],
            seg.installer_names[seg.installer_codes[row]],
        )

    async def _commit(self, upserts: Sequence[Rule], deletes: Sequence[str]) -> None:
        # Shielded: once the write starts, the in-memory view must follow the disk.
        with trio.CancelScope(shield=True):
            base = self.table
            table = await trio.to_thread.run_sync(self.store.append, base, upserts, deletes)
            self.adopt(table)
            if deletes:
                self.cache.remove_many(deletes)
            if upserts:
                refs = [table.ref(rule.rule_id) for rule in upserts]
                self.cache.insert_many(
                    (rule.rule_id, RuleRef(ref.segment, ref.row, rule))
                    for rule, ref in zip(upserts, refs, strict=True)
                    if ref is not None
                )
            self.writes.value += 1

    async def apply_replicated(self, columns: SegmentColumns) -> None:
        """Apply a batch of upserts and deletions decided elsewhere, at its version.

        For fleet replication: ``columns`` (rules, ``deleted_ids``, ``bridge_version``
        = the fleet's version, above this store's) become one journal append, and the
        hot cache follows, as for a local install. All or nothing; raises the storage
        errors of :meth:`WarmStore.append_columns`. Completes even if the caller is
        cancelled once started (the disk and the in-memory view never disagree).

        Not fsynced (``durable=False``): the database is the source of truth, so a
        replica's store is a cache of it. The commit stays atomic; what a power loss
        takes, the replica pulls again (a store found damaged is rebuilt at start).
        """
        async with self.write_lock:
            with trio.CancelScope(shield=True):
                table = await trio.to_thread.run_sync(
                    functools.partial(self.store.append_columns, self.table, columns, durable=False)
                )
                self.adopt(table)
                if columns.deleted_ids:
                    self.cache.remove_many(columns.deleted_ids)
                if columns.ids:
                    refs = [(key, ref) for key in columns.ids if (ref := table.ref(key))]
                    self.cache.insert_many(refs)
                self.writes.value += 1

    async def replace_replicated(self, columns: SegmentColumns) -> None:
        """Replace every rule with ``columns`` at their version (a fleet resync).

        Crash-safe whole-store replacement (a new generation); the hot cache keeps
        the ids that still exist, pointing at their new content, and drops the rest.
        Raises the storage errors of :meth:`WarmStore.replace_columns`.
        """
        async with self.write_lock:
            with trio.CancelScope(shield=True):
                table = await trio.to_thread.run_sync(self.store.replace_columns, columns)
                self.adopt(table)
                self.cache.replace(
                    [(key, ref) for key, _ in self.cache.snapshot() if (ref := table.ref(key))]
                )
                self.writes.value += 1

    def adopt(self, table: WarmTable) -> None:
        """Make ``table`` the current warm view (after a write or a refresh)."""
        self.table = table

    async def compact_if_needed(self) -> bool:
        """Fold the journal into a new snapshot when it has grown; True if it did.

        Holds the write lock while compacting (writes wait; reads do not).
        """
        if not self.store.needs_compaction():
            return False
        async with self.write_lock:
            with trio.CancelScope(shield=True):
                table = await trio.to_thread.run_sync(self.store.compact)
                self.adopt(table)
                # Point the hot entries at the new generation (same rules, same order):
                # refs into the old one would keep its deleted files mapped for good.
                self.cache.replace(
                    [(key, ref) for key, _ in self.cache.snapshot() if (ref := table.ref(key))]
                )
        return True


def _stamped_batch(rules: Sequence[Rule], agent_id: str, config_id: str, owner: str) -> list[Rule]:
    """Validate a batch for ``agent_id`` and stamp its provenance (worker thread)."""
    stamped: list[Rule] = []
    seen: set[str] = set()
    for rule in rules:
        rule.validate()
        if rule.rule_id in seen:
            raise RuleValidationError(
                rule.rule_id, "rule_id", "appears more than once in the request"
            )
        seen.add(rule.rule_id)
        if rule.agent_id and rule.agent_id != agent_id:
            raise RuleValidationError(
                rule.rule_id,
                "agent_id",
                f"rule is scoped to agent {echo(rule.agent_id)} but the request is for "
                f"{echo(agent_id)}",
            )
        stamped.append(attrs.evolve(rule, installed_by=agent_id, config_id=config_id, owner=owner))
    return stamped
