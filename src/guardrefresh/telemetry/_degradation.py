"""A session writer's health: sessions it had to drop, and WARNINGs at most once a
:attr:`warn interval <Degradation.warn_interval_s>` while it cannot write.

Shared by the SQLite and the PostgreSQL writers, which fail in different ways (a full
disk, a database gone) but degrade and recover the same way: keep recording into the
queue, drop and count what cannot be written, say so once a minute, and say once when
writing works again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ._writer_counters import WriterCounters

__all__ = ["Degradation"]

logger = logging.getLogger(__name__)


class Degradation:
    """Health of one writer; ``warn_interval_s`` is read at each warning (the writers
    keep it as an attribute tests may lower)."""

    def __init__(self, counters: WriterCounters, warn_interval_s: Callable[[], float]) -> None:
        self._counters = counters
        self._warn_interval_s = warn_interval_s
        self._last_warning = -float("inf")
        self._suppressed = 0
        self._dropped_since_healthy = 0

    def drop(self, count: int, reason: str) -> None:
        """``count`` sessions could not be written because of ``reason``."""
        self._counters.dropped += count
        self._dropped_since_healthy += count
        self.degraded(f"{reason}; {count} sessions dropped")

    def degraded(self, message: str) -> None:
        """The writer cannot write; WARNING unless one went out within the interval."""
        self._counters.healthy = False
        now = time.monotonic()
        if now - self._last_warning >= self._warn_interval_s():
            more = f" ({self._suppressed} similar warnings suppressed)" if self._suppressed else ""
            logger.warning("Telemetry degraded: %s%s", message, more)
            self._last_warning = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    def recovered(self) -> None:
        """The writer wrote again; one INFO line if it had been degraded."""
        if self._counters.healthy:
            return
        self._counters.healthy = True
        logger.info(
            "Telemetry recording recovered (%d sessions dropped while degraded)",
            self._dropped_since_healthy,
        )
        self._dropped_since_healthy = 0
        self._last_warning = -float("inf")
        self._suppressed = 0
