"""Removing old tombstones: :func:`serve_tombstone_collection`."""

from __future__ import annotations

import logging
import random

import trio

from ._engine import Engine
from ._errors import ReplicationError
from ._sql import collect_tombstones

__all__ = ["collection_interval", "serve_tombstone_collection"]

logger = logging.getLogger(__name__)


def collection_interval(retention_s: float) -> float:
    """How often to look for expired tombstones: a quarter of the retention, 1 s to 1 h."""
    return min(3600.0, max(1.0, retention_s / 4))


async def serve_tombstone_collection(
    engine: Engine,
    retention_s: float,
    *,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every :func:`collection_interval` (jittered), delete tombstones older than
    ``retention_s`` and raise the horizon over them, when no other replica is doing
    it (advisory lock, tried). Runs until cancelled; a failure is logged at DEBUG and
    retried next time (the replica loop reports the database's state).
    """
    rng = rng or random.Random()
    interval = collection_interval(retention_s)
    task_status.started()
    while True:
        await trio.sleep(interval * rng.uniform(0.75, 1.25))
        try:
            outcome = await engine.run(
                collect_tombstones, retention_s, what="collecting old tombstones"
            )
        except ReplicationError as exc:
            logger.debug("Tombstone collection skipped: %s", exc)
            continue
        if outcome is not None and outcome[0]:
            logger.info(
                "Removed %d tombstones older than %gs: horizon now version %d",
                outcome[0],
                retention_s,
                outcome[1],
            )
