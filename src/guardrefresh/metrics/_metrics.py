"""The service's Prometheus metrics: names, one registry per service, update hooks.

Two kinds of metric live here:

- Events the service reports as they happen (refreshes, failures, loads, RPCs):
  ordinary ``prometheus_client`` counters and histograms, updated by the
  ``observe_*`` methods.
- State that lives elsewhere (hot cache counters, warm storage size, the
  scheduler's plan): read at scrape time by a collector over callbacks given to
  :meth:`ServiceMetrics.bind`, so the numbers can never drift from their source.

Every metric is registered in the instance's own :class:`CollectorRegistry`,
never in ``prometheus_client.REGISTRY``: two services (or two tests) in one
process do not see each other's numbers. ``docs/metrics.md`` is the reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Final

from grpclib.const import Status
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import __version__
from ._edge import EdgeCollector, EdgeCountsLike, LoopErrorsLike
from ._enforce import EnforceMetrics
from ._grpc import (
    BUILTIN_GRPC_TYPES,
    GRPC_TYPES,
    RPC_DURATION_BUCKETS,
    grpc_code_name,
    split_method,
)
from ._protocols import CacheStatsLike, RefreshStatsLike, SchedulerStatusLike
from ._reasons import REFRESH_ERROR_REASONS
from ._replication import ReplicationCollector, ReplicationStatusLike
from ._state import BoundState, StateCollector
from ._telemetry import TelemetryCollector, TelemetryStatsLike

__all__ = ["REFRESH_DURATION_BUCKETS", "ServiceMetrics"]

#: Buckets of ``guard_scheduler_refresh_duration_seconds``: 1 ms .. 10 s, about
#: three per decade (a 100k-rule refresh targets 0.5 s; an unchanged one takes ms).
REFRESH_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_SUCCESS = "success"
_FAILURE = "failure"
_CHANGES = ("added", "removed", "changed")


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")  # also refuses NaN
    if math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_label(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


class ServiceMetrics:
    """The Prometheus metrics of one guardrefresh service, in their own registry.

    Serve :attr:`registry` with :func:`~guardrefresh.metrics.serve_metrics`.
    Event metrics move through the ``observe_*`` methods (cheap, synchronous, safe
    from Trio and from asyncio handlers on the same thread); state metrics are
    read at scrape time from the callbacks given to :meth:`bind`, so they are
    absent from the exposition until it is called. ``wall_clock`` (seconds since
    the epoch) decides staleness; the timestamps themselves come from their source.

    The ``observe_*`` methods raise :exc:`ValueError` on a value no metric can
    hold (negative or NaN seconds, an unknown reason or status code); they never
    raise for a valid one.
    """

    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self._last_success_s = 0.0
        self._bound: BoundState | None = None
        self._grpc_types: dict[str, str] = dict(BUILTIN_GRPC_TYPES)
        self.registry = CollectorRegistry()
        r = self.registry

        self._refreshes = Counter(
            "guard_scheduler_refresh_total",
            "Refreshes of the hot cache from warm storage that ended, by trigger and result. "
            "Callers that joined a refresh in flight count once each.",
            ["trigger", "result"],
            registry=r,
        )
        self._refresh_duration = Histogram(
            "guard_scheduler_refresh_duration_seconds",
            "How long refreshes took (load, verify, swap), by trigger and result.",
            ["trigger", "result"],
            buckets=REFRESH_DURATION_BUCKETS,
            registry=r,
        )
        self._refresh_errors = Counter(
            "guard_scheduler_refresh_errors_total",
            "Failed refreshes by reason (see docs/metrics.md for the reasons).",
            ["reason"],
            registry=r,
        )
        self._rule_changes = Counter(
            "guardrefresh_refresh_rule_changes_total",
            "Rules a successful refresh added to, removed from or changed in the hot cache.",
            ["change"],
            registry=r,
        )
        self._loads = Counter(
            "guardrefresh_warm_storage_loads_total",
            "Full loads of warm storage started (single flight: concurrent refreshes share one).",
            registry=r,
        )
        self._rpcs = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status (go-grpc-prometheus name).",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self._rpc_duration = Histogram(
            "grpc_server_handling_seconds",
            "Time from receiving an RPC's headers to its end (go-grpc-prometheus name).",
            ["grpc_type", "grpc_service", "grpc_method"],
            buckets=RPC_DURATION_BUCKETS,
            registry=r,
        )
        Gauge(
            "guardrefresh_build_info",
            "Always 1; the label says which guardrefresh serves these metrics.",
            ["version"],
            registry=r,
        ).labels(version=__version__).set(1)

        # Deferred like the refresh import below: keeps this module's imports light.
        from ..enforce import ENCODE_FAILURE_REASONS

        #: Enforce decisions, latency, rules evaluated, encoder failures.
        self.enforce = EnforceMetrics(r, ENCODE_FAILURE_REASONS)

        # Known label values start at 0, so rate() and increase() see the first event.
        for reason in REFRESH_ERROR_REASONS:
            self._refresh_errors.labels(reason=reason)
        for change in _CHANGES:
            self._rule_changes.labels(change=change)
        # Deferred: the refresh package may import this module to report through it.
        from ..refresh import RefreshTrigger

        for trigger in RefreshTrigger:
            self._init_trigger(str(trigger))

    def _init_trigger(self, trigger: str) -> None:
        for result in (_SUCCESS, _FAILURE):
            self._refreshes.labels(trigger=trigger, result=result)
            self._refresh_duration.labels(trigger=trigger, result=result)

    # ----------------------------------------------------------------- binding ---

    def bind(
        self,
        *,
        hot_cache_stats: Callable[[], CacheStatsLike],
        warm_rules: Callable[[], int],
        warm_bytes: Callable[[], int],
        bridge_version: Callable[[], int],
        scheduler_status: Callable[[], SchedulerStatusLike],
        staleness_limit_s: float,
    ) -> None:
        """Expose state that lives elsewhere; each callback runs at every scrape.

        The callbacks run on the thread that serves the scrape (the Trio thread with
        :func:`~guardrefresh.metrics.serve_metrics`), so they may read Trio-owned
        state directly; keep them cheap (no I/O). Binding twice is an error.
        """
        if self._bound is not None:
            raise RuntimeError("ServiceMetrics.bind() can be called only once")
        if not (staleness_limit_s > 0 and math.isfinite(staleness_limit_s)):
            raise ValueError(f"staleness_limit_s must be finite and > 0, got {staleness_limit_s!r}")
        state = BoundState(
            hot_cache_stats=hot_cache_stats,
            warm_rules=warm_rules,
            warm_bytes=warm_bytes,
            bridge_version=bridge_version,
            scheduler_status=scheduler_status,
            staleness_limit_s=float(staleness_limit_s),
        )
        self.registry.register(
            StateCollector(
                state, last_success_s=lambda: self._last_success_s, wall_clock=self._wall_clock
            )
        )
        self._bound = state

    def bind_replication(self, status: Callable[[], ReplicationStatusLike]) -> None:
        """Expose fleet replication (``guardrefresh_replication_*``), read at each
        scrape from ``status`` (cheap: no database access)."""
        self.registry.register(ReplicationCollector(status))

    def bind_telemetry(self, stats: Callable[[], TelemetryStatsLike]) -> None:
        """Expose the telemetry store's counters (``guardrefresh_telemetry_*``), read at
        each scrape from ``stats`` (cheap: a snapshot of counters, no I/O)."""
        self.registry.register(TelemetryCollector(stats))

    def bind_edge(
        self,
        *,
        counts: Callable[[], EdgeCountsLike],
        open_connections: Callable[[], int],
        held_requests: Callable[[], int],
        max_connections: int,
        loop_errors: LoopErrorsLike | None = None,
    ) -> None:
        """Expose the connection layer's counters (``guardrefresh_connections_*``,
        ``guardrefresh_requests_awaiting_body``, ``guardrefresh_accept_errors_total``,
        ``guardrefresh_loop_errors_total``), read at each scrape: pass
        ``GrpcHost.edge_counts``'s getter, ``GrpcHost.open_connections``'s,
        ``GrpcHost.held_requests``'s, the cap in force, and the loop's
        :class:`~guardrefresh.server.LoopErrorHandler` (None leaves the accept and loop
        error families out)."""
        self.registry.register(
            EdgeCollector(
                counts=counts,
                open_connections=open_connections,
                held_requests=held_requests,
                max_connections=max_connections,
                loop_errors=loop_errors,
            )
        )

    def add_grpc_services(self, services: Iterable[object]) -> None:
        """Learn the ``grpc_type`` of each method of these grpclib servables and start
        their ``grpc_server_handled_total{grpc_code="OK"}`` series at 0 (as
        go-grpc-prometheus' ``InitializeMetrics`` does). Health and reflection are known
        already; a method never described is reported with ``grpc_type="unknown"``.
        """
        for service in services:
            mapping = getattr(service, "__mapping__", None)
            if mapping is None:
                raise TypeError(f"{service!r} is not a grpclib service (no __mapping__)")
            for path, handler in mapping().items():
                grpc_type = GRPC_TYPES[handler.cardinality]
                self._grpc_types[path] = grpc_type
                grpc_service, grpc_method = split_method(path)
                labels = {"grpc_type": grpc_type, "grpc_service": grpc_service}
                self._rpcs.labels(**labels, grpc_method=grpc_method, grpc_code="OK")
                self._rpc_duration.labels(**labels, grpc_method=grpc_method)

    # ------------------------------------------------------------------ events ---

    def observe_refresh(self, stats: RefreshStatsLike, *, trigger: str | None = None) -> None:
        """A refresh succeeded. Call once per caller that got ``stats``.

        ``trigger`` defaults to ``stats.trigger``; pass the caller's own when it
        joined a refresh another trigger started (single flight).
        """
        label = _check_label("trigger", str(trigger if trigger is not None else stats.trigger))
        seconds = _check_seconds("stats.duration_ms", stats.duration_ms) / 1000
        self._init_trigger(label)
        self._refreshes.labels(trigger=label, result=_SUCCESS).inc()
        self._refresh_duration.labels(trigger=label, result=_SUCCESS).observe(seconds)
        for change in _CHANGES:
            count: int = getattr(stats, change)
            if count:
                self._rule_changes.labels(change=change).inc(count)
        self._last_success_s = max(self._last_success_s, stats.timestamp_ms / 1000)

    def observe_refresh_failure(self, trigger: str, reason: str, duration_s: float) -> None:
        """A refresh failed; ``reason`` is one of :data:`REFRESH_ERROR_REASONS`
        (use :func:`refresh_error_reason`)."""
        label = _check_label("trigger", str(trigger))
        if reason not in REFRESH_ERROR_REASONS:
            raise ValueError(f"reason must be one of {REFRESH_ERROR_REASONS}, got {reason!r}")
        seconds = _check_seconds("duration_s", duration_s)
        self._init_trigger(label)
        self._refreshes.labels(trigger=label, result=_FAILURE).inc()
        self._refresh_duration.labels(trigger=label, result=_FAILURE).observe(seconds)
        self._refresh_errors.labels(reason=reason).inc()

    def observe_load(self) -> None:
        """A full load of warm storage started."""
        self._loads.inc()

    def observe_rpc(self, method: str, code: Status | str, seconds: float) -> None:
        """An RPC ended. Matches ``GrpcHost(on_call_done=...)``: pass this method itself.

        ``method`` is the full path (``"/rule_installation.DataPlane/GetRule"``);
        ``code`` a grpclib :class:`~grpclib.const.Status` or a name
        :func:`grpc_code_name` accepts.
        """
        grpc_service, grpc_method = split_method(method)
        grpc_code = grpc_code_name(code)
        seconds = _check_seconds("seconds", seconds)
        grpc_type = self._grpc_types.get(method, "unknown")
        self._rpcs.labels(grpc_type, grpc_service, grpc_method, grpc_code).inc()
        self._rpc_duration.labels(grpc_type, grpc_service, grpc_method).observe(seconds)
