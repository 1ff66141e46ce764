"""The event-driven refresh: reload warm storage into the hot cache, single-flight."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path
from typing import Protocol

import attrs
import trio
import trio_util

from ..bridge import Bridge
from ..model import echo_names
from ..storage import RuleRef, StorageError, WarmTable, atomic_write
from ._errors import RefreshError
from ._stats import RefreshStats, RefreshTrigger

logger = logging.getLogger(__name__)


@attrs.frozen
class _Prepared:
    """What a load produced, computed off the event loop, ready to swap in."""

    table: WarmTable
    items: list[tuple[str, RuleRef]]
    added: int
    removed: int
    changed: int
    swap: bool


class RefreshObserver(Protocol):
    """Told about every refresh outcome (metrics use this)."""

    def observe_load(self) -> None: ...

    def observe_refresh(self, stats: RefreshStats) -> None: ...

    def observe_refresh_failure(
        self, trigger: str, error: BaseException, duration_s: float
    ) -> None: ...


class _Flight:
    """One load shared by every caller that joined it."""

    def __init__(self, families: frozenset[str]) -> None:
        self.families = families  # empty = all
        self.done = trio.Event()
        self.started = False
        self.stats: RefreshStats | None = None
        self.error: RefreshError | None = None

    def covers(self, families: frozenset[str]) -> bool:
        return not self.families or (bool(families) and families <= self.families)

    async def result(self) -> RefreshStats:
        await self.done.wait()
        if self.error is not None:
            raise RefreshError(str(self.error)) from self.error
        assert self.stats is not None
        return self.stats


class RefreshService:
    """Reloads warm storage into the hot cache on request.

    Use :func:`open_refresh_service`, which owns the task that runs loads:
    a caller that is cancelled (say, a gRPC client giving up) stops waiting
    but does not cancel the load other callers share. Closing the service
    cancels a load in progress; the hot cache is then left exactly as it was.

    Single flight: while a refresh runs, a caller whose request it covers (it
    is a full refresh, or its families include the requested ones) joins it;
    any other caller joins the one refresh queued behind it. So any burst of
    concurrent calls costs at most two loads.
    """

    def __init__(
        self,
        bridge: Bridge,
        nursery: trio.Nursery,
        *,
        working_set_path: Path | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._bridge = bridge
        self._nursery = nursery
        self._wall_clock = wall_clock
        self._working_set_path = working_set_path
        self._running: _Flight | None = None
        self._queued: _Flight | None = None
        self._last_stats: trio_util.AsyncValue[RefreshStats | None] = trio_util.AsyncValue(None)
        #: Loads started since the service opened (each reads the whole store).
        self.loads = 0
        #: Test and benchmark hook: runs in the worker thread right before a load.
        self.before_load: Callable[[], None] | None = None
        #: Failures in a row, of any trigger (0 after a success), and the last one's text.
        self.consecutive_failures = 0
        self.last_error = ""
        self.observers: list[RefreshObserver] = []

    @property
    def last_stats(self) -> trio_util.AsyncValue[RefreshStats | None]:
        return self._last_stats

    async def refresh(
        self, families: Sequence[str] = (), *, trigger: RefreshTrigger = RefreshTrigger.MANUAL
    ) -> RefreshStats:
        """Reload ``families`` (empty = all) from warm storage; see the class docstring.

        Raises :class:`RefreshError` saying why when the load or verification
        fails; the hot cache then keeps serving its last good content.
        """
        wanted = frozenset(families)
        running = self._running
        if running is not None and running.covers(wanted):
            return await running.result()
        queued = self._queued
        if queued is None:
            queued = self._queued = _Flight(wanted)
            self._nursery.start_soon(self._fly, queued, trigger)
        elif queued.families and not queued.covers(wanted):
            # Widen the queued load (it has not started yet) to cover this caller too.
            queued.families = frozenset() if not wanted else queued.families | wanted
        return await queued.result()

    async def _fly(self, flight: _Flight, trigger: RefreshTrigger) -> None:
        try:
            while self._running is not None:
                await self._running.done.wait()
            self._queued = None
            self._running = flight
            flight.started = True
            started = time.perf_counter()
            try:
                flight.stats = await self._refresh_once(flight.families, trigger)
            except RefreshError as exc:
                flight.error = exc
            except trio.Cancelled as exc:
                flight.error = RefreshError("refresh cancelled: the service is shutting down")
                flight.error.__cause__ = exc
                raise
            except Exception as exc:  # never leave joiners hanging on a bug
                logger.exception("Refresh failed unexpectedly")
                flight.error = RefreshError(f"unexpected error: {exc!r}")
                flight.error.__cause__ = exc
            if flight.error is not None:
                self.consecutive_failures += 1
                self.last_error = str(flight.error)
                # The scheduler logs its own documented line for periodic failures.
                logger.log(
                    logging.DEBUG if trigger is RefreshTrigger.PERIODIC else logging.WARNING,
                    "Refresh failed (trigger %s): %s",
                    trigger,
                    flight.error,
                    extra={"trigger": str(trigger), "error": str(flight.error)},
                )
                for observer in self.observers:
                    observer.observe_refresh_failure(
                        str(trigger), flight.error, time.perf_counter() - started
                    )
        finally:
            if self._running is flight:
                self._running = None
            if self._queued is flight:
                self._queued = None
            flight.done.set()

    async def _refresh_once(
        self, families: frozenset[str], trigger: RefreshTrigger
    ) -> RefreshStats:
        bridge = self._bridge
        started = time.perf_counter()
        async with bridge.write_lock:
            before = bridge.cache.snapshot()
            preferred: list[str] = []
            if not before and self._working_set_path is not None:
                preferred = await trio.to_thread.run_sync(_read_working_set, self._working_set_path)
            self.loads += 1
            for observer in self.observers:
                observer.observe_load()
            try:
                prepared = await trio.to_thread.run_sync(
                    self._prepare, families, before, preferred, bridge.table
                )
            except StorageError as exc:
                raise RefreshError(str(exc)) from exc
            except OSError as exc:
                # The store names every file error it expects; anything else the OS
                # refuses while loading (out of descriptors: EMFILE, ENFILE; out of
                # memory for a mapping) is a storage failure too, not a bug.
                raise RefreshError(f"cannot load warm storage: {exc}") from exc
            # A load cannot be interrupted in its thread; if we were cancelled
            # meanwhile, stop here, before anything is swapped.
            await trio.lowlevel.checkpoint_if_cancelled()
            # The swap: synchronous from here on, so no reader sees half of it.
            if prepared.swap:
                bridge.cache.replace(prepared.items, families=families or None)
            bridge.adopt(prepared.table)
        duration_ms = (time.perf_counter() - started) * 1000
        unchanged = not (prepared.added or prepared.removed or prepared.changed)
        stats = RefreshStats(
            rules_refreshed=len(prepared.items),
            duration_ms=duration_ms,
            timestamp_ms=int(self._wall_clock() * 1000),
            trigger=trigger,
            families=tuple(sorted(families)),
            bridge_version=prepared.table.bridge_version,
            added=prepared.added,
            removed=prepared.removed,
            changed=prepared.changed,
            unchanged=unchanged,
        )
        logger.info(
            "Refreshed %d rules in %.1f ms (trigger %s, families %s, version %d, +%d -%d ~%d%s)",
            stats.rules_refreshed,
            duration_ms,
            trigger,
            echo_names(stats.families, empty="all"),
            stats.bridge_version,
            stats.added,
            stats.removed,
            stats.changed,
            ", unchanged" if unchanged else "",
            extra={
                "rules": stats.rules_refreshed,
                "duration_ms": round(duration_ms, 3),
                "trigger": str(trigger),
                "families": list(stats.families),
                "bridge_version": stats.bridge_version,
                "added": stats.added,
                "removed": stats.removed,
                "changed": stats.changed,
                "unchanged": unchanged,
            },
        )
        self.consecutive_failures = 0
        self.last_error = ""
        for observer in self.observers:
            observer.observe_refresh(stats)
        self._last_stats.value = stats
        return stats

    def _prepare(
        self,
        families: frozenset[str],
        before: list[tuple[str, RuleRef]],
        preferred: list[str],
        current: WarmTable,
    ) -> _Prepared:
        """Worker thread: load and verify, then pick what will be hot and diff it."""
        if self.before_load is not None:
            self.before_load()
        table = self._bridge.store.load()
        capacity = self._bridge.cache.capacity
        generation = current.generation
        if (
            not families
            and (table.generation, table.bridge_version) == (generation, current.bridge_version)
            and len(before) in (capacity, len(table))
        ):
            # The manifest pins the content: the same generation and version hold the
            # same rules, every hot one is still there and nothing more would fit.
            # Skip the per-rule diff; keep the current table and its refs.
            return _Prepared(current, before, 0, 0, 0, swap=False)
        in_scope: Collection[str] | None = families or None
        old = {key: ref for key, ref in before if in_scope is None or ref.family_id in in_scope}
        # Working set first (most recently used first), then fill to capacity.
        order = [key for key, _ref in reversed(before)] + preferred
        chosen: dict[str, RuleRef] = {}
        if in_scope is not None:
            # Untouched families keep their slots; the refreshed ones share the rest.
            capacity = max(0, capacity - (len(before) - len(old)))
        for key in order:
            if len(chosen) >= capacity:
                break
            if key in chosen:
                continue
            ref = table.ref(key)
            if ref is not None and (in_scope is None or ref.family_id in in_scope):
                chosen[key] = ref
        if len(chosen) < capacity:
            for ref in table.iter_refs(in_scope):
                key = ref.rule_id
                if key not in chosen:
                    chosen[key] = ref
                    if len(chosen) >= capacity:
                        break
        added = sum(1 for key in chosen if key not in old)
        removed = sum(1 for key in old if key not in chosen)
        changed = sum(
            1 for key, ref in chosen.items() if key in old and old[key].digest != ref.digest
        )
        identical = not (added or removed or changed)
        # Same content from the same files: keep the current refs. A new generation
        # (after compaction) is swapped anyway so old files can be released.
        swap = not identical or table.generation != generation
        return _Prepared(table, list(chosen.items()), added, removed, changed, swap)

    async def save_working_set(self) -> None:
        """Persist the most recently used rule ids (crash-safely) for the next start."""
        if self._working_set_path is None:
            return
        ids = self._bridge.cache.keys_mru()
        path = self._working_set_path
        try:
            await trio.to_thread.run_sync(_write_working_set, path, ids)
        except (OSError, StorageError) as exc:
            logger.warning("Could not save the working set to %s: %s", path, exc)


def _read_working_set(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        logger.warning("Ignoring unreadable working set %s: %s", path, exc)
        return []
    try:
        doc = json.loads(raw)
        ids = doc["mru"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError("mru must be a list of strings")
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("Ignoring malformed working set %s: %s", path, exc)
        return []
    return ids


def _write_working_set(path: Path, ids: list[str]) -> None:
    atomic_write(path, [json.dumps({"mru": ids}).encode()])


@contextlib.asynccontextmanager
async def open_refresh_service(
    bridge: Bridge,
    *,
    working_set_path: Path | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[RefreshService]:
    """Run a :class:`RefreshService` for the duration of the block.

    Leaving the block cancels a load in progress (the hot cache stays as it
    was; waiting callers get :class:`RefreshError`).
    """
    async with trio.open_nursery() as nursery:
        service = RefreshService(
            bridge, nursery, working_set_path=working_set_path, wall_clock=wall_clock
        )
        try:
            yield service
        finally:
            nursery.cancel_scope.cancel()
