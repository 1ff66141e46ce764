"""The service's fleet mode (``--replication``): engine, replica, writer, watchers."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator

import attrs
import trio

from ..bridge import Bridge
from ..config import ReplicationConfig
from ..refresh import RefreshService
from ..replication import (
    Engine,
    EngineSettings,
    FleetWriter,
    PasswordFileError,
    ReconcilingRefresher,
    Replica,
    open_engine,
    serve_tombstone_collection,
)
from ._health import ServingGate

__all__ = ["Fleet", "FleetStartupError", "open_fleet", "watch_replication"]

logger = logging.getLogger(__name__)


class FleetStartupError(Exception):
    """Fleet mode cannot start; ``str()`` is the reason."""


@attrs.frozen
class Fleet:
    """The parts of fleet mode the service wires in."""

    engine: Engine
    replica: Replica
    writer: FleetWriter
    refresher: ReconcilingRefresher
    config: ReplicationConfig

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the replica loop and the tombstone collection in ``nursery``."""
        await nursery.start(self.replica.serve)
        await nursery.start(
            functools.partial(
                serve_tombstone_collection, self.engine, self.config.tombstone_retention
            )
        )


@contextlib.asynccontextmanager
async def open_fleet(
    config: ReplicationConfig, bridge: Bridge, refresher: RefreshService
) -> AsyncIterator[Fleet | None]:
    """Fleet mode for the block when ``config`` enables it, else None.

    Needs the trio-asyncio loop around it. Raises :class:`FleetStartupError` when the
    password file cannot be used; the database being down is no reason not to start
    (the replica serves its local rules and keeps trying).
    """
    if not config.enabled:
        yield None
        return
    try:
        settings = EngineSettings.from_config(config)
    except PasswordFileError as exc:
        raise FleetStartupError(str(exc)) from None
    async with open_engine(settings) as engine:
        replica = Replica(bridge, engine, max_lag_s=config.max_lag)
        logger.info(
            "Fleet mode: replicating through %s (local version %d)",
            engine.masked_dsn,
            bridge.bridge_version,
        )
        yield Fleet(
            engine,
            replica,
            FleetWriter(bridge, engine, replica),
            ReconcilingRefresher(replica, refresher),
            config,
        )


async def watch_replication(replica: Replica, gate: ServingGate, fail_when_stale: bool) -> None:
    """Keep health NOT_SERVING until the first sync; with ``fail_when_stale`` also
    while the lag exceeds --max-replication-lag. Logs the transitions.

    Wakes on state changes and when the lag would cross the limit: no polling.
    """
    was_lagging = False
    while True:
        status = replica.status()
        gate.set("fleet-synced", status.synced)
        if status.lagging != was_lagging:
            if status.lagging:
                logger.warning(
                    "Replication lag %.1fs exceeds --max-replication-lag %gs (%d versions "
                    "behind%s)%s",
                    status.lag_s,
                    status.max_lag_s,
                    status.versions_behind,
                    "" if status.connected else ", database unreachable",
                    "; health NOT_SERVING" if fail_when_stale else "",
                )
            else:
                logger.info("Replication lag back within --max-replication-lag")
            was_lagging = status.lagging
        if fail_when_stale:
            gate.set("fleet-lag", not status.lagging)
        wait = replica.seconds_until_lagging(time.time())
        with trio.move_on_after(wait + 0.01 if wait != float("inf") else wait):
            await replica.changes.wait_transition()
