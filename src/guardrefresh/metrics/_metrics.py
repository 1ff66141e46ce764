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

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

import trio
from grpclib.const import Cardinality, Status
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__
from ..storage import (
    CorruptStoreError,
    StorageError,
    StoreBusyError,
    StoreDirectoryMissingError,
    StorePermissionError,
    StoreWriteError,
    UnsafeStoreError,
    UnsupportedVersionError,
)
from ._edge import EdgeCollector, EdgeCountsLike, LoopErrorsLike
from ._enforce import EnforceMetrics
from ._replication import ReplicationCollector, ReplicationStatusLike
from ._telemetry import TelemetryCollector, TelemetryStatsLike

__all__ = [
    "GRPC_TYPES",
    "REFRESH_DURATION_BUCKETS",
    "REFRESH_ERROR_REASONS",
    "RPC_DURATION_BUCKETS",
    "CacheStatsLike",
    "RefreshStatsLike",
    "SchedulerStatusLike",
    "ServiceMetrics",
    "grpc_code_name",
    "refresh_error_reason",
]

logger = logging.getLogger(__name__)

#: Buckets of ``guard_scheduler_refresh_duration_seconds``: 1 ms .. 10 s, about
#: three per decade (a 100k-rule refresh targets 0.5 s; an unchanged one takes ms).
REFRESH_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: Buckets of ``grpc_server_handling_seconds``: go-grpc-prometheus' defaults
#: (``prometheus.DefBuckets``), plus 1 ms and 2.5 ms for the hot read path.
RPC_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: Every value of the ``reason`` label of ``guard_scheduler_refresh_errors_total``.
REFRESH_ERROR_REASONS: Final = (
    "corrupt",  # a file failed verification (CorruptStoreError)
    "version",  # written by a newer format (UnsupportedVersionError)
    "permission",  # the OS refused access (StorePermissionError, PermissionError)
    "unsafe",  # owned by another user or writable by others (UnsafeStoreError)
    "missing",  # the directory or a file is gone (StoreDirectoryMissingError, FileNotFoundError)
    "busy",  # another process holds the store's lock (StoreBusyError)
    "io",  # any other storage or OS error (StoreWriteError, StorageError, OSError)
    "cancelled",  # the service shut down during the refresh
    "other",  # anything else: a bug
)

#: ``grpc_type`` label values, as go-grpc-prometheus names them.
GRPC_TYPES: Final = {
    Cardinality.UNARY_UNARY: "unary",
    Cardinality.STREAM_UNARY: "client_stream",
    Cardinality.UNARY_STREAM: "server_stream",
    Cardinality.STREAM_STREAM: "bidi_stream",
}

# The services GrpcHost adds by itself; add_grpc_services() learns the others.
_BUILTIN_GRPC_TYPES: Final = {
    "/grpc.health.v1.Health/Check": "unary",
    "/grpc.health.v1.Health/Watch": "server_stream",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "bidi_stream",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "bidi_stream",
}

# Go's codes.Code.String(), indexed by code: the grpc_code values existing
# dashboards (built on go-grpc-prometheus) filter on.
_GO_CODE_NAMES: Final = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
    "Unauthenticated",
)  # fmt: skip
_CODE_BY_NAME: Final = {
    **{status.name: _GO_CODE_NAMES[status.value] for status in Status},
    **{name: name for name in _GO_CODE_NAMES},
}

_SUCCESS = "success"
_FAILURE = "failure"
_CHANGES = ("added", "removed", "changed")


class CacheStatsLike(Protocol):
    """What the metrics read from :class:`guardrefresh.cache.CacheStats`."""

    @property
    def entries(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def total_evictions(self) -> int: ...
    @property
    def total_evicted(self) -> int: ...


class SchedulerStatusLike(Protocol):
    """What the metrics read from :class:`guardrefresh.refresh.SchedulerStatus`."""

    @property
    def enabled(self) -> bool: ...
    @property
    def running(self) -> bool: ...
    @property
    def last_success_ms(self) -> int: ...
    @property
    def next_refresh_ms(self) -> int: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def current_interval_s(self) -> float: ...
    @property
    def backoff_s(self) -> float: ...


class RefreshStatsLike(Protocol):
    """What the metrics read from :class:`guardrefresh.refresh.RefreshStats`."""

    @property
    def trigger(self) -> str: ...
    @property
    def duration_ms(self) -> float: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def added(self) -> int: ...
    @property
    def removed(self) -> int: ...
    @property
    def changed(self) -> int: ...


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


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it: ``__cause__``, else an unsuppressed ``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


# Most specific first: a subclass must come before its base.
_SPECIFIC_REASONS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (CorruptStoreError, "corrupt"),
    (UnsupportedVersionError, "version"),
    (StorePermissionError, "permission"),
    (UnsafeStoreError, "unsafe"),
    (StoreDirectoryMissingError, "missing"),
    (StoreBusyError, "busy"),
    (StoreWriteError, "io"),
)
_GENERIC_REASONS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (PermissionError, "permission"),
    (FileNotFoundError, "missing"),
    (NotADirectoryError, "missing"),
    (StorageError, "io"),
    (OSError, "io"),
)


def refresh_error_reason(exc: BaseException) -> str:
    """The ``reason`` label for a failed refresh: one of :data:`REFRESH_ERROR_REASONS`.

    Looks at ``exc`` and the chain of exceptions that caused it (``raise ... from``
    or, failing that, implicit chaining): the most specific storage error anywhere
    in the chain decides (a :class:`~guardrefresh.refresh.RefreshError` wrapping a
    :class:`~guardrefresh.storage.CorruptStoreError` is ``"corrupt"``); then a
    cancellation; then generic OS and storage errors; else ``"other"``. Never raises.
    """
    chain = list(_causes(exc))
    for error in chain:
        for cls, reason in _SPECIFIC_REASONS:
            if isinstance(error, cls):
                return reason
    if any(isinstance(error, trio.Cancelled | asyncio.CancelledError) for error in chain):
        return "cancelled"
    for error in chain:
        for cls, reason in _GENERIC_REASONS:
            if isinstance(error, cls):
                return reason
    return "other"


def grpc_code_name(code: Status | str) -> str:
    """The ``grpc_code`` label: Go's name of the status code (``Status.UNAVAILABLE`` →
    ``"Unavailable"``, as go-grpc-prometheus reports it). Accepts a grpclib
    :class:`~grpclib.const.Status`, its name (``"UNAVAILABLE"``) or the Go name;
    :exc:`ValueError` for anything else.
    """
    if isinstance(code, Status):
        return _GO_CODE_NAMES[code.value]
    try:
        return _CODE_BY_NAME[code]
    except (KeyError, TypeError):
        raise ValueError(f"not a gRPC status code: {code!r}") from None


def _split_method(path: str) -> tuple[str, str]:
    """``"/pkg.Service/Method"`` → ``("pkg.Service", "Method")``."""
    service, sep, method = path.lstrip("/").rpartition("/")
    if not sep or not service or not method:
        raise ValueError(f"not a gRPC method path ('/package.Service/Method'): {path!r}")
    return service, method


class _BoundState:
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


class _StateCollector:
    """Reads the bound callbacks at scrape time.

    A callback that raises costs only its own metrics in that scrape (logged),
    never the whole scrape: a broken cache-stats accessor must not hide the
    scheduler's staleness.
    """

    def __init__(self, owner: ServiceMetrics, state: _BoundState) -> None:
        self._owner = owner
        self._state = state

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
            last_s = max(status.last_success_ms / 1000, self._owner._last_success_s)
            now_s = self._owner._wall_clock()
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
        self._bound: _BoundState | None = None
        self._grpc_types: dict[str, str] = dict(_BUILTIN_GRPC_TYPES)
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
        state = _BoundState(
            hot_cache_stats=hot_cache_stats,
            warm_rules=warm_rules,
            warm_bytes=warm_bytes,
            bridge_version=bridge_version,
            scheduler_status=scheduler_status,
            staleness_limit_s=float(staleness_limit_s),
        )
        self.registry.register(_StateCollector(self, state))
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
        max_connections: int,
        loop_errors: LoopErrorsLike | None = None,
    ) -> None:
        """Expose the connection layer's counters (``guardrefresh_connections_*``,
        ``guardrefresh_accept_errors_total``, ``guardrefresh_loop_errors_total``), read at
        each scrape: pass ``GrpcHost.edge_counts``'s getter, ``GrpcHost.open_connections``'s,
        the cap in force, and the loop's :class:`~guardrefresh.server.LoopErrorHandler`
        (None leaves the accept and loop error families out)."""
        self.registry.register(
            EdgeCollector(
                counts=counts,
                open_connections=open_connections,
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
                grpc_service, grpc_method = _split_method(path)
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
        grpc_service, grpc_method = _split_method(method)
        grpc_code = grpc_code_name(code)
        seconds = _check_seconds("seconds", seconds)
        grpc_type = self._grpc_types.get(method, "unknown")
        self._rpcs.labels(grpc_type, grpc_service, grpc_method, grpc_code).inc()
        self._rpc_duration.labels(grpc_type, grpc_service, grpc_method).observe(seconds)
