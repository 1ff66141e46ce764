"""The service's background tasks besides the scheduler: staleness watch, compaction,
and the ordered shutdown after a signal."""

from __future__ import annotations

import logging
import math
import time

import trio

from ..bridge import Bridge
from ..config import ServiceConfig
from ..refresh import RefreshScheduler, RefreshService, is_stale
from ..server import GrpcHost
from ..storage import StorageError
from ._health import ServingGate
from ._memory import release_free_memory

__all__ = ["compact_in_background", "shutdown", "watch_staleness"]

logger = logging.getLogger(__name__)


async def shutdown(
    nursery: trio.Nursery,
    host: GrpcHost,
    scheduler: RefreshScheduler,
    refresher: RefreshService,
    config: ServiceConfig,
) -> None:
    """Drain the server, stop the scheduler, save the working set, then end ``nursery``."""
    report = await host.drain(config.server.shutdown_grace)
    logger.info(
        "Drained: %d in flight at start, %d completed, %d cancelled, %d rejected, "
        "%d connections closed in %.2fs",
        report.in_flight_at_start,
        report.completed,
        report.cancelled,
        report.rejected,
        report.connections_closed,
        report.duration_s,
    )
    scheduler.stop()
    logger.info("Scheduler stopped")
    await refresher.save_working_set()
    nursery.cancel_scope.cancel()
    logger.info("Shutdown complete")


async def watch_staleness(
    gate: ServingGate, refresher: RefreshService, limit_s: float, fail_when_stale: bool
) -> None:
    """Log when rules go stale or fresh again; with ``fail_when_stale`` flip health too.

    Sleeps until the moment the last success would turn stale, or until the next
    success, whichever comes first: no polling.
    """
    was_stale = False
    while True:
        last = refresher.last_stats.value
        now_ms = int(time.time() * 1000)
        last_ms = last.timestamp_ms if last is not None else 0
        stale = is_stale(last_ms, now_ms, limit_s)
        if stale != was_stale:
            age = "never refreshed" if not last_ms else f"{(now_ms - last_ms) / 1000:.0f}s ago"
            if stale:
                logger.warning(
                    "Rules are stale: last successful refresh %s (limit %ss)%s",
                    age,
                    limit_s,
                    "; health NOT_SERVING" if fail_when_stale else "",
                )
            else:
                logger.info(
                    "Rules are fresh again%s", "; health SERVING" if fail_when_stale else ""
                )
            was_stale = stale
        if fail_when_stale:
            gate.set("fresh", not stale)
        wait = math.inf if stale else limit_s - (now_ms - last_ms) / 1000 + 0.001
        with trio.move_on_after(wait):
            await refresher.last_stats.wait_transition()


async def compact_in_background(bridge: Bridge) -> None:
    """Fold the journal into a new snapshot when it has grown (checked after writes)."""
    while True:
        await bridge.writes.wait_transition()
        try:
            compacted = await bridge.compact_if_needed()
        except StorageError as exc:
            logger.warning("Compaction failed (the journal keeps working): %s", exc)
        else:
            if compacted:
                # The journal's segments were just freed, a few MB in holes of the heap.
                await trio.to_thread.run_sync(release_free_memory)
