"""The replica loop: keep this process's warm storage in step with the fleet's database."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio
import trio_util

from ..bridge import Bridge
from ..storage import SegmentColumns, StorageError
from ._engine import Engine
from ._errors import EngineUnavailableError, NotAppliedError, ReplicationError
from ._record import PageDecoder
from ._schema import CHANNEL, RULES_MIGRATIONS, apply_migrations
from ._sql import Head, Pull, fleet_digest, pull_changes, read_snapshot
from ._status import ReplicationStatus

__all__ = ["Replica"]

logger = logging.getLogger(__name__)

#: Without a notification, pull anyway this often (a lost NOTIFY costs at most this).
POLL_S = 5.0
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
#: Rows per pull (~4 MB of rules); a page never splits one write.
PAGE_ROWS = 500
#: Pages up to this many rules are decoded on the event loop (well under a millisecond).
_INLINE_ROWS = 16
#: A repeated failure is logged again at most this often.
_LOG_EVERY_S = 60.0


class Replica:
    """One fleet replica's replication: the loop (:meth:`serve`), syncs and resyncs.

    All methods run on the Trio thread. The database is reached only through
    ``engine``; the local store only through ``bridge`` (one journal append per
    pulled page, at the fleet's version; a whole-store replacement for a resync), so
    the hot cache and Enforce's evaluation sets follow the bridge version as they do
    for local writes. Reads and Enforce keep serving the local rules whatever happens
    to the database.
    """

    def __init__(
        self,
        bridge: Bridge,
        engine: Engine,
        *,
        max_lag_s: float = 0.0,
        page_rows: int = PAGE_ROWS,
        poll_s: float = POLL_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._bridge = bridge
        self._engine = engine
        self._max_lag_s = max_lag_s
        self._page_rows = page_rows
        self._poll_s = poll_s
        self._clock = wall_clock
        self._started_at = wall_clock()
        #: The version this replica has applied; writers wait on it.
        self.applied = trio_util.AsyncValue(bridge.bridge_version)
        #: Set once the first sync since start is complete.
        self.synced = trio_util.AsyncBool(False)
        #: Bumped whenever the state shown by :meth:`status` changes (health watchers).
        self.changes = trio_util.AsyncValue(0)
        self._connected = False
        self._fleet_version = bridge.bridge_version
        self._horizon = 0
        self._behind_since: float | None = None
        self._last_synced_at = 0.0
        self._resyncs = 0
        self._last_error = ""
        self._last_logged = -math.inf
        self._wake = trio.Event()
        self._sync_lock = trio.Lock()

    # -- state ---------------------------------------------------------------------
    def status(self) -> ReplicationStatus:
        now = self._clock()
        return ReplicationStatus(
            engine=self._engine.masked_dsn,
            connected=self._connected,
            synced=self.synced.value,
            fleet_version=self._fleet_version,
            local_version=self._bridge.bridge_version,
            lag_s=self.lag_s(now),
            max_lag_s=self._max_lag_s,
            last_synced_ms=int(self._last_synced_at * 1000),
            resyncs=self._resyncs,
            last_error=self._last_error,
            horizon=self._horizon,
        )

    def lag_s(self, now: float) -> float:
        """Seconds behind the fleet (see :attr:`ReplicationStatus.lag_s`)."""
        if not self._connected:
            return max(0.0, now - (self._last_synced_at or self._started_at))
        if self._behind_since is None:
            return 0.0
        return max(0.0, now - self._behind_since)

    def seconds_until_lagging(self, now: float) -> float:
        """How long until the lag would pass --max-replication-lag if nothing changes."""
        if self._max_lag_s <= 0:
            return math.inf
        if self._connected and self._behind_since is None:
            return math.inf
        return max(0.0, self._max_lag_s - self.lag_s(now))

    def _changed(self) -> None:
        self.changes.value += 1

    def notice_version(self, version: int) -> None:
        """The fleet holds ``version`` (a notification, a write here): pull soon."""
        if version > self._fleet_version:
            self._fleet_version = version
        if version > self._bridge.bridge_version and self._behind_since is None:
            self._behind_since = self._clock()
        self._wake.set()
        self._changed()

    async def wait_applied(self, version: int, timeout_s: float) -> None:
        """Wait until this replica has applied ``version`` (read-your-writes).

        Raises :class:`NotAppliedError` after ``timeout_s``.
        """
        self.notice_version(version)
        with trio.move_on_after(timeout_s):
            await self.applied.wait_value(lambda applied: applied >= version)
            return
        raise NotAppliedError(
            f"the change was committed to the fleet (version {version}) but this replica has "
            f"not applied it within {timeout_s:g}s"
            + (f": {self._last_error}" if self._last_error else "")
            + "; it will appear once replication catches up"
        )

    # -- the loop ------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Replicate until cancelled; never raises for database or storage failures.

        Migrates the schema, connects, LISTENs, pulls every change above the local
        version (a resync when that is impossible), reconciles once after start, then
        pulls after each notification or every ``poll_s``. On any failure: logged,
        status shows it, back off 50 ms doubling to 2 s, reconnect and pull again
        (notifications sent meanwhile are lost). Started at once: health waits for
        :attr:`synced`.
        """
        task_status.started()
        backoff = BACKOFF_MIN_S
        migrated = False
        while True:
            try:
                if not migrated:
                    await self._engine.run(
                        apply_migrations, RULES_MIGRATIONS, what="migrating the schema"
                    )
                    migrated = True
                await self._session()
            except (ReplicationError, StorageError) as exc:
                was = self._connected
                if was:
                    backoff = BACKOFF_MIN_S
                self._connected = False
                self._last_error = str(exc)
                self._changed()
                now = self._clock()
                if was or now - self._last_logged >= _LOG_EVERY_S:
                    self._last_logged = now
                    logger.warning(
                        "Fleet replication interrupted (serving the local rules at version %d): %s",
                        self._bridge.bridge_version,
                        exc,
                        extra={"bridge_version": self._bridge.bridge_version},
                    )
            else:  # pragma: no cover - _session only returns by raising
                continue
            await trio.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _session(self) -> None:
        lost = trio.Event()

        def on_notify(payload: str) -> None:
            try:
                self.notice_version(int(payload))
            except ValueError:
                self._wake.set()

        def on_lost() -> None:
            lost.set()
            self._wake.set()

        async with self._engine.listen(CHANNEL, on_notify, on_lost):
            self._wake = trio.Event()
            await self.sync()
            if not self.synced.value:
                await self.reconcile()
            if not self._connected or self._last_error:
                logger.info(
                    "Fleet replica connected to %s: version %d, %d rules",
                    self._engine.masked_dsn,
                    self._bridge.bridge_version,
                    len(self._bridge.table),
                    extra={"bridge_version": self._bridge.bridge_version},
                )
            self._connected = True
            self._last_error = ""
            if not self.synced.value:
                self.synced.value = True
                logger.info("Fleet replica in sync at version %d", self._bridge.bridge_version)
            self._changed()
            while True:
                with trio.move_on_after(self._poll_s):
                    await self._wake.wait()
                if lost.is_set():
                    raise EngineUnavailableError("the listening connection was lost")
                self._wake = trio.Event()
                await self.sync()

    # -- sync, resync, reconcile -------------------------------------------------------
    async def sync(self) -> None:
        """Pull and apply every change above the local version, page by page.

        Raises :class:`EngineUnavailableError` or a storage error; what was applied
        before stays applied (each page is whole writes, committed locally at once).
        """
        async with self._sync_lock:
            while True:
                pull: Pull = await self._engine.run(
                    pull_changes,
                    self._bridge.bridge_version,
                    self._page_rows,
                    what="pulling changes",
                )
                self._note_head(pull.head)
                if pull.resync:
                    await self._resync_locked(self._resync_reason(pull.head))
                    continue
                if pull.upserts or pull.deletes:
                    if pull.oldest_change_at is not None and self._behind_since is None:
                        self._behind_since = pull.oldest_change_at
                    if len(pull.upserts) > _INLINE_ROWS:
                        columns = await trio.to_thread.run_sync(_page_columns, pull)
                    else:  # a few rules: cheaper here than a thread hop
                        columns = _page_columns(pull)
                    await self._bridge.apply_replicated(columns)
                    self.applied.value = pull.version
                if not pull.more:
                    self._caught_up()
                    return

    def _note_head(self, head: Head) -> None:
        self._horizon = head.horizon
        self._fleet_version = head.version

    def _caught_up(self) -> None:
        self._behind_since = None
        self._last_synced_at = self._clock()
        self.applied.value = self._bridge.bridge_version
        self._changed()

    def _resync_reason(self, head: Head) -> str:
        local = self._bridge.bridge_version
        if local < head.horizon:
            return (
                f"local version {local} is below the tombstone horizon {head.horizon} "
                "(removals it missed are gone)"
            )
        return (
            f"local version {local} is ahead of the fleet's {head.version} "
            "(a store of another fleet, or the database was reset)"
        )

    async def resync(self, reason: str) -> None:
        """Replace the local store with the fleet's whole rule set, atomically."""
        async with self._sync_lock:
            await self._resync_locked(reason)

    async def _resync_locked(self, reason: str) -> None:
        started = time.perf_counter()
        logger.warning("Fleet resync: %s; reading the whole rule set", reason)
        snapshot = await self._engine.run(read_snapshot, what="reading the rule set")
        version = snapshot.digest.head.version
        columns = await trio.to_thread.run_sync(
            lambda: snapshot.rules.columns(bridge_version=version)
        )
        await self._bridge.replace_replicated(columns)
        self._resyncs += 1
        self._note_head(snapshot.digest.head)
        self.applied.value = version
        self._caught_up()
        logger.warning(
            "Fleet resync done: %d rules at version %d in %.0f ms",
            len(columns.ids),
            version,
            (time.perf_counter() - started) * 1000,
            extra={"rules": len(columns.ids), "bridge_version": version},
        )

    async def reconcile(self) -> bool:
        """Compare the local rule set with the fleet's; resync on a mismatch.

        Pulls first, then compares version, rule count and digest sum taken in one
        snapshot of the database. Returns True when it resynchronised. When the fleet
        keeps moving (three tries), it leaves the comparison to the next call.
        """
        for _attempt in range(3):
            await self.sync()
            fleet = await self._engine.run(fleet_digest, what="reading the fleet's digest")
            self._note_head(fleet.head)
            table = self._bridge.table
            if fleet.head.version != table.bridge_version:
                continue
            count, digest = len(table), table.content_digest()
            if (count, digest) == (fleet.count, fleet.digest):
                logger.debug(
                    "Reconciled with the fleet at version %d: %d rules", fleet.head.version, count
                )
                return False
            await self.resync(
                f"the rule set differs from the fleet's at version {fleet.head.version} "
                f"({count} rules here, {fleet.count} there, digests {digest:016x} and "
                f"{fleet.digest:016x})"
            )
            return True
        return False


def _page_columns(pull: Pull) -> SegmentColumns:
    """A pulled page as one segment's columns (worker thread)."""
    decoder = PageDecoder()
    decoder.add(pull.upserts)
    return decoder.columns(bridge_version=pull.version, deleted_ids=pull.deletes)
