"""State metrics read at scrape time from callbacks, so they never drift from their source."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ._protocols import CacheStatsLike, SchedulerStatusLike

__all__ = ["BoundState", "StateCollector"]

logger = logging.getLogger(__name__)


class BoundState:
    """The callbacks of :meth:`ServiceMetrics.bind`."""

    def __init__(
        self,
        *,
        hot_cache_stats: Callable[[], CacheStatsLike],
        warm_rules: Callable[[], int],
        warm_bytes: Callable[[], int],
        bridge_version: Callable[[], int],
        scheduler_status: Callable[[], SchedulerStatusLike],
        staleness_limit_s: float,
    ) -> None:
        self.hot_cache_stats = hot_cache_stats
        self.warm_rules = warm_rules
        self.warm_bytes = warm_bytes
        self.bridge_version = bridge_version
        self.scheduler_status = scheduler_status
        self.staleness_limit_s = staleness_limit_s


class StateCollector:
    """Reads the bound callbacks at scrape time.

    A callback that raises costs only its own metrics in that scrape (logged),
    never the whole scrape: a broken cache-stats accessor must not hide the
    scheduler's staleness.
    """

    def __init__(
        self,
        state: BoundState,
        *,
        last_success_s: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._state = state
        #: The newest success the owner has observed (may be newer than the scheduler's).
        self._last_success_s = last_success_s
        self._wall_clock = wall_clock

    def describe(self) -> Iterable[Metric]:
        # Names only, so the registry can refuse duplicates at registration.
        return [*self._hot_cache(None), *self._warm_storage(None), *self._scheduler(None)]

    def collect(self) -> Iterable[Metric]:
        state = self._state
        return [
            *self._guarded("hot cache stats", lambda: self._hot_cache(state.hot_cache_stats())),
            *self._guarded(
                "warm storage",
                lambda: self._warm_storage(
                    (state.warm_rules(), state.warm_bytes(), state.bridge_version())
                ),
            ),
            *self._guarded("scheduler status", lambda: self._scheduler(state.scheduler_status())),
        ]

    @staticmethod
    def _guarded(what: str, build: Callable[[], list[Metric]]) -> list[Metric]:
        try:
            return build()
        except Exception:
            logger.exception("metrics: reading %s failed; its metrics are left out", what)
            return []

    def _hot_cache(self, stats: CacheStatsLike | None) -> list[Metric]:
        def gauge(name: str, doc: str, value: int | None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: int | None) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        s = stats
        return [
            gauge("guardrefresh_hot_cache_rules", "Rules in the hot cache now.",
                  None if s is None else s.entries),
            gauge("guardrefresh_hot_cache_capacity", "Most rules the hot cache holds.",
                  None if s is None else s.capacity),
            counter("guardrefresh_hot_cache_hits_total", "Hot cache lookups that found the rule.",
                    None if s is None else s.hits),
            counter("guardrefresh_hot_cache_misses_total",
                    "Hot cache lookups that did not find the rule.",
                    None if s is None else s.misses),
            counter("guardrefresh_hot_cache_evictions_total",
                    "Eviction batches the hot cache ran (each removes several LRU entries).",
                    None if s is None else s.total_evictions),
            counter("guardrefresh_hot_cache_evicted_total",
                    "Entries removed from the hot cache by eviction.",
                    None if s is None else s.total_evicted),
        ]  # fmt: skip

    def _warm_storage(self, values: tuple[int, int, int] | None) -> list[Metric]:
        rules, size, version = values if values is not None else (None, None, None)
        return [
            GaugeMetricFamily("guardrefresh_warm_storage_rules",
                              "Live rules in warm storage (the table the service serves from).",
                              value=rules),
            GaugeMetricFamily("guardrefresh_warm_storage_bytes",
                              "Bytes of warm storage the current table maps.", value=size),
            GaugeMetricFamily("guardrefresh_bridge_version",
                              "Bridge version of the rules in warm storage.", value=version),
        ]  # fmt: skip

    def _scheduler(self, status: SchedulerStatusLike | None) -> list[Metric]:
        limit = self._state.staleness_limit_s
        if status is None:
            values: list[float | None] = [None] * 9
        else:
            last_s = max(status.last_success_ms / 1000, self._last_success_s())
            now_s = self._wall_clock()
            stale = last_s == 0 or now_s - last_s > limit
            values = [
                last_s,
                status.next_refresh_ms / 1000,
                status.consecutive_failures,
                status.current_interval_s,
                status.backoff_s,
                float(status.enabled),
                float(status.running),
                float(stale),
                limit,
            ]
        docs = (
            ("guard_scheduler_last_success_timestamp_seconds",
             "When the last refresh of any trigger succeeded, seconds since the epoch; 0 = never."),
            ("guard_scheduler_next_refresh_timestamp_seconds",
             "When the next periodic refresh is planned, seconds since the epoch; 0 = none "
             "planned (disabled, stopped, or one is running)."),
            ("guard_scheduler_consecutive_failures",
             "Refresh attempts of the scheduler that failed in a row; 0 after a success."),
            ("guard_scheduler_interval_seconds",
             "Current periodic refresh interval (the configured one, stretched when "
             "refreshes are slow)."),
            ("guard_scheduler_backoff_seconds",
             "Current retry wait after failures (before jitter); 0 when healthy."),
            ("guard_scheduler_enabled", "1 if periodic refresh is enabled in the configuration."),
            ("guard_scheduler_running", "1 while the scheduler's loop runs."),
            ("guard_scheduler_stale",
             "1 if the rules are stale: never refreshed, or the last success is older than "
             "guard_scheduler_staleness_limit_seconds."),
            ("guard_scheduler_staleness_limit_seconds",
             "Age of the last success beyond which the rules count as stale."),
        )  # fmt: skip
        return [
            GaugeMetricFamily(name, doc, value=value)
            for (name, doc), value in zip(docs, values, strict=True)
        ]
