"""The telemetry store's metrics, read at scrape time from its counters.

The writer thread keeps its own counters (no Prometheus objects on that thread); this
collector turns a snapshot of them into metric families on each scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["TelemetryCollector", "TelemetryStatsLike"]

logger = logging.getLogger(__name__)


class TelemetryStatsLike(Protocol):
    """What the metrics read from :class:`guardrefresh.telemetry.TelemetryStats`."""

    @property
    def recorded(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def queue_depth(self) -> int: ...
    @property
    def pruned(self) -> int: ...
    @property
    def database_bytes(self) -> int: ...
    @property
    def commit_counts(self) -> Sequence[int]: ...
    @property
    def commit_seconds(self) -> float: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def buckets(self) -> Sequence[float]: ...


class TelemetryCollector:
    """A ``prometheus_client`` collector over a telemetry stats callback."""

    def __init__(self, stats: Callable[[], TelemetryStatsLike]) -> None:
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        try:
            stats = self._stats()
        except Exception:
            logger.exception("metrics: reading telemetry stats failed; its metrics are left out")
            return []
        return self._families(stats)

    @staticmethod
    def _families(s: TelemetryStatsLike | None) -> list[Metric]:
        def value(attr: str) -> float | None:
            return None if s is None else float(getattr(s, attr))

        histogram = HistogramMetricFamily(
            "guardrefresh_telemetry_batch_commit_seconds",
            "Time to commit one batch of sessions (one transaction, SQLite or the fleet's PostgreSQL).",
        )
        if s is not None:
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(s.buckets, s.commit_counts, strict=False):
                cumulative += count
                buckets.append((repr(float(bound)), cumulative))
            buckets.append(("+Inf", sum(s.commit_counts)))
            histogram.add_metric([], buckets, sum_value=s.commit_seconds)
        return [
            CounterMetricFamily(
                "guardrefresh_telemetry_sessions_recorded_total",
                "Enforcement sessions committed to the telemetry database.",
                value=value("recorded"),
            ),
            CounterMetricFamily(
                "guardrefresh_telemetry_dropped_total",
                "Enforcement sessions lost: queue full, or a failed write (disk full, "
                "read-only, database unavailable).",
                value=value("dropped"),
            ),
            GaugeMetricFamily(
                "guardrefresh_telemetry_queue_depth",
                "Sessions waiting for the telemetry writer.",
                value=value("queue_depth"),
            ),
            histogram,
            GaugeMetricFamily(
                "guardrefresh_telemetry_database_bytes",
                "Bytes of the telemetry database and its write-ahead log (in fleet mode: of the "
                "fleet's whole sessions table).",
                value=value("database_bytes"),
            ),
            CounterMetricFamily(
                "guardrefresh_telemetry_pruned_total",
                "Sessions deleted by retention (age or --telemetry-max-sessions).",
                value=value("pruned"),
            ),
            GaugeMetricFamily(
                "guardrefresh_telemetry_healthy",
                "1 while sessions are being written; 0 while telemetry is degraded.",
                value=value("healthy"),
            ),
        ]
