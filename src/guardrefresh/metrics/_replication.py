"""Fleet replication's metrics, read at scrape time from the replica's status."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["ReplicationCollector", "ReplicationStatusLike"]

logger = logging.getLogger(__name__)


class ReplicationStatusLike(Protocol):
    """What the metrics read from :class:`guardrefresh.replication.ReplicationStatus`."""

    @property
    def connected(self) -> bool: ...
    @property
    def synced(self) -> bool: ...
    @property
    def fleet_version(self) -> int: ...
    @property
    def local_version(self) -> int: ...
    @property
    def versions_behind(self) -> int: ...
    @property
    def lag_s(self) -> float: ...
    @property
    def lagging(self) -> bool: ...
    @property
    def resyncs(self) -> int: ...
    @property
    def horizon(self) -> int: ...


class ReplicationCollector:
    """A ``prometheus_client`` collector over a replication status callback."""

    def __init__(self, status: Callable[[], ReplicationStatusLike]) -> None:
        self._status = status

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        try:
            status = self._status()
        except Exception:
            logger.exception("metrics: reading the replication status failed; left out")
            return []
        return self._families(status)

    @staticmethod
    def _families(s: ReplicationStatusLike | None) -> list[Metric]:
        def value(attr: str) -> float | None:
            return None if s is None else float(getattr(s, attr))

        def gauge(name: str, doc: str, attr: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value(attr))

        return [
            gauge(
                "guardrefresh_replication_connected",
                "1 while connected to the fleet's database and listening for changes.",
                "connected",
            ),
            gauge(
                "guardrefresh_replication_synced",
                "1 once the first sync since start is done (health is NOT_SERVING before).",
                "synced",
            ),
            gauge(
                "guardrefresh_replication_fleet_version",
                "The newest version the fleet's database is known to hold.",
                "fleet_version",
            ),
            gauge(
                "guardrefresh_replication_local_version",
                "The version this replica's warm storage holds.",
                "local_version",
            ),
            gauge(
                "guardrefresh_replication_versions_behind",
                "Fleet version minus local version.",
                "versions_behind",
            ),
            gauge(
                "guardrefresh_replication_lag_seconds",
                "Seconds since the oldest change not applied here was made (0 when caught "
                "up); while disconnected, since this replica was last known up to date.",
                "lag_s",
            ),
            gauge(
                "guardrefresh_replication_lagging",
                "1 while the lag exceeds --max-replication-lag.",
                "lagging",
            ),
            gauge(
                "guardrefresh_replication_horizon",
                "The tombstone horizon: a replica below it resynchronises.",
                "horizon",
            ),
            CounterMetricFamily(
                "guardrefresh_replication_resyncs",
                "Full resynchronisations of the local store from the fleet since start.",
                value=value("resyncs"),
            ),
        ]
