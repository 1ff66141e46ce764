"""The service process: one root nursery supervising server, refresher and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import logging
import math
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import attrs
import threadpoolctl
import trio

from ..bridge import Bridge
from ..config import ConfigError, ServiceConfig
from ..enforce import EnforcementEngine, IntentEncoder, open_intent_encoder
from ..metrics import ServiceMetrics, refresh_error_reason, serve_metrics
from ..refresh import (
    RefreshError,
    RefreshScheduler,
    RefreshService,
    RefreshStats,
    RefreshTrigger,
    is_stale,
    open_refresh_service,
)
from ..replication import open_engine
from ..server import (
    AdminAuth,
    DataPlaneService,
    DependencyInternalsError,
    EdgeLimits,
    EnforceHandler,
    EnforceObserver,
    GrpcHost,
    LoopErrorHandler,
    TlsConfigError,
    TokenFileError,
    max_connections_for,
    open_asyncio_loop,
    server_ssl_context,
)
from ..storage import StorageError, working_set_path
from ..telemetry import EnforceRecorder, TelemetryStore, open_telemetry
from ._fleet import Fleet, FleetStartupError, open_fleet, watch_replication
from ._health import ServingGate
from ._limits import raise_fd_limit
from ._memory import release_free_memory, tune_allocator
from ._trim import trim_after_request_bursts

logger = logging.getLogger(__name__)

#: Connections of fleet telemetry's own pool: one writer, two concurrent reads.
TELEMETRY_POOL_SIZE: Final = 3


class StartupError(Exception):
    """The service could not start; ``str()`` is the one-line reason."""


async def serve_service(
    config: ServiceConfig, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the whole service until SIGTERM/SIGINT has drained it.

    Reports the bound gRPC port through ``task_status`` once the warm-up
    refresh is done, the scheduler runs and the port listens (health is
    SERVING from then on). Raises :class:`StartupError` when it cannot start.
    """
    config.security.check()
    config.replication.check()
    fd_limit = raise_fd_limit()
    try:
        bridge = await Bridge.open(
            Path(config.storage.warm_storage),
            hot_capacity=config.storage.hot_capacity,
            max_rules_per_install=config.server.max_rules_per_install,
            make_dirs=True,
        )
    except StorageError as exc:
        raise StartupError(f"cannot open warm storage: {exc}") from None
    try:
        async with (
            open_asyncio_loop() as loop,
            open_refresh_service(
                bridge, working_set_path=working_set_path(Path(config.storage.warm_storage))
            ) as refresher,
            _open_fleet(config, bridge, refresher) as fleet,
            open_intent_encoder(config.enforce.management_plane_url) as encoder,
            # Entered before the server starts and left after it has drained: every
            # session of an answered Enforce call is written before the process exits.
            _open_telemetry(config, fleet) as telemetry,
        ):
            await _supervise(
                config,
                bridge,
                refresher,
                encoder,
                telemetry,
                fleet,
                _edge_limits(config, fd_limit),
                _loop_errors(loop),
                task_status,
            )
    finally:
        bridge.close()


def _loop_errors(loop: asyncio.AbstractEventLoop) -> LoopErrorHandler | None:
    """The counters of the loop's error handler (installed by ``open_asyncio_loop``)."""
    handler = loop.get_exception_handler()
    return handler if isinstance(handler, LoopErrorHandler) else None


@contextlib.asynccontextmanager
async def _open_fleet(
    config: ServiceConfig, bridge: Bridge, refresher: RefreshService
) -> AsyncIterator[Fleet | None]:
    try:
        async with open_fleet(config.replication, bridge, refresher) as fleet:
            yield fleet
    except FleetStartupError as exc:
        raise StartupError(str(exc)) from None


@contextlib.asynccontextmanager
async def _open_telemetry(
    config: ServiceConfig, fleet: Fleet | None
) -> AsyncIterator[TelemetryStore | None]:
    """The telemetry store, or None with --no-telemetry: in fleet mode the fleet's
    PostgreSQL (every replica reads every replica's sessions), else SQLite."""
    settings = config.telemetry
    if not settings.enabled:
        logger.info("Telemetry is off (--no-telemetry): Enforce decisions are not recorded")
        yield None
        return
    path = settings.database_path(Path(config.storage.warm_storage))
    async with contextlib.AsyncExitStack() as stack:
        engine = None
        if fleet is not None:
            # A pool of its own: deep telemetry pages never hold the replica's connections.
            engine = await stack.enter_async_context(
                open_engine(attrs.evolve(fleet.engine.settings, pool_size=TELEMETRY_POOL_SIZE))
            )
        telemetry = await stack.enter_async_context(
            open_telemetry(
                path,
                batch_window_s=settings.batch_window,
                retention_s=settings.retention,
                max_sessions=settings.max_sessions,
                queue_capacity=settings.queue_size,
                engine=engine,
            )
        )
        logger.info(
            "Telemetry: recording Enforce sessions in %s (kept %ss, at most %d)",
            telemetry.location,
            f"{settings.retention:g}",
            settings.max_sessions,
        )
        yield telemetry


class _RefreshMetrics:
    """Feeds refresh outcomes (one per load, whoever asked) into the metrics."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def observe_load(self) -> None:
        self._metrics.observe_load()

    def observe_refresh(self, stats: RefreshStats) -> None:
        self._metrics.observe_refresh(stats)

    def observe_refresh_failure(
        self, trigger: str, error: BaseException, duration_s: float
    ) -> None:
        self._metrics.observe_refresh_failure(trigger, refresh_error_reason(error), duration_s)


def _security(config: ServiceConfig) -> tuple[ssl.SSLContext | None, AdminAuth | None]:
    security = config.security
    try:
        context = None
        if security.tls_cert is not None and security.tls_key is not None:
            context = server_ssl_context(
                security.tls_cert, security.tls_key, security.tls_client_ca
            )
        auth = None
        if security.admin_token_file is not None:
            auth = AdminAuth.from_file(security.admin_token_file, protect_reads=security.auth_reads)
    except (TlsConfigError, TokenFileError) as exc:
        raise StartupError(str(exc)) from None
    return context, auth


def _edge_limits(config: ServiceConfig, fd_limit: int) -> EdgeLimits:
    server = config.server
    return EdgeLimits(
        max_connections=server.max_connections or max_connections_for(fd_limit),
        idle_timeout_s=server.idle_timeout or math.inf,
    )


async def _supervise(
    config: ServiceConfig,
    bridge: Bridge,
    refresher: RefreshService,
    encoder: IntentEncoder,
    telemetry: TelemetryStore | None,
    fleet: Fleet | None,
    edge_limits: EdgeLimits,
    loop_errors: LoopErrorHandler | None,
    task_status: trio.TaskStatus[int],
) -> None:
    ssl_context, auth = _security(config)
    metrics = ServiceMetrics()
    refresher.observers.append(_RefreshMetrics(metrics))
    if config.scheduler.refresh_on_start:
        try:
            stats = await refresher.refresh(trigger=RefreshTrigger.STARTUP)
        except RefreshError as exc:
            raise StartupError(f"warm-up refresh failed: {exc}") from None
        logger.info(
            "Warm-up refresh: %d rules hot of %d in warm storage, in %dms (bridge version %d)",
            stats.rules_refreshed,
            len(bridge.table),
            round(stats.duration_ms),
            stats.bridge_version,
        )
    _tune_garbage_collector()
    # In fleet mode the periodic refresh reconciles with the fleet first.
    scheduler = RefreshScheduler(
        fleet.refresher if fleet is not None else refresher, config.scheduler
    )
    staleness_limit = config.health.staleness_limit(config.scheduler.refresh_interval)
    observers: list[EnforceObserver] = [metrics.enforce.observe]
    if telemetry is not None:
        observers.append(EnforceRecorder(telemetry))
    enforcer = EnforceHandler(EnforcementEngine(bridge), encoder, observers=observers)
    dataplane = DataPlaneService(
        bridge,
        refresher,
        scheduler,
        staleness_limit_s=staleness_limit,
        enforcer=enforcer,
        telemetry=telemetry,
        writer=fleet.writer if fleet is not None else None,
        replication=fleet.replica.status if fleet is not None else None,
    )
    metrics.add_grpc_services([dataplane])
    if fleet is not None:
        metrics.bind_replication(fleet.replica.status)
    if telemetry is not None:
        metrics.bind_telemetry(telemetry.stats)
    metrics.bind(
        hot_cache_stats=bridge.cache.stats,
        warm_rules=lambda: len(bridge.table),
        warm_bytes=lambda: sum(seg.size for seg in bridge.table.segments),
        bridge_version=lambda: bridge.bridge_version,
        scheduler_status=scheduler.status,
        staleness_limit_s=staleness_limit,
    )
    host = GrpcHost(
        [dataplane],
        host=config.server.host,
        port=config.server.port,
        max_message_bytes=config.server.max_message_bytes,
        max_concurrent_streams=config.server.max_concurrent_streams,
        max_pending_request_bytes=config.server.max_pending_request_bytes,
        request_timeout=config.server.request_timeout,
        # 0 = GrpcHost's defaults, sized to this machine.
        max_concurrent_rpcs=config.server.max_concurrent_rpcs or None,
        max_queued_rpcs=config.server.max_queued_rpcs or None,
        ssl=ssl_context,
        on_call_done=metrics.observe_rpc,
        authorize=auth.check if auth is not None else None,
        edge_limits=edge_limits,
    )
    metrics.bind_edge(
        counts=lambda: host.edge_counts,
        open_connections=lambda: host.open_connections,
        max_connections=edge_limits.max_connections,
        loop_errors=loop_errors,
    )
    gate = ServingGate(host)
    if fleet is not None:
        gate.set("fleet-synced", False)  # NOT_SERVING until the first sync
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            logger.info("Spawning scheduled refresh background task")
            await nursery.start(scheduler.run)
            if fleet is not None:
                await fleet.start(nursery)
            try:
                port = await nursery.start(host.serve)
            except OSError as exc:
                raise StartupError(_bind_error(config, exc)) from None
            if config.metrics.enabled:
                try:
                    metrics_port = await nursery.start(
                        functools.partial(
                            serve_metrics,
                            metrics.registry,
                            host=config.metrics.host,
                            port=config.metrics.port,
                        )
                    )
                except OSError as exc:
                    raise StartupError(
                        f"cannot serve metrics on {config.metrics.host}:{config.metrics.port}: "
                        f"{exc.strerror or exc}"
                    ) from None
                logger.info("Metrics on http://%s:%d/metrics", config.metrics.host, metrics_port)
            gate.open()
            if ssl_context is not None:
                mutual = config.security.tls_client_ca is not None
                logger.info("gRPC over TLS%s", ", client certificates required" if mutual else "")
            if auth is not None:
                logger.info(
                    "Admin token required for changes%s", " and reads" if auth.protect_reads else ""
                )
            if encoder.endpoint is not None:
                logger.info("Enforce encodes intents without a vector at %s", encoder.endpoint)
            else:
                logger.info(
                    "No management plane URL: Enforce requests without an intent_vector "
                    "are denied (fail-closed)"
                )
            # Scripts and tests wait for this line: keep its shape.
            logger.info("Listening on %s:%d", config.server.host, port)
            nursery.start_soon(_compact_in_background, bridge)
            nursery.start_soon(
                trim_after_request_bursts,
                host.request_budget.released,
                host.calls_ended,
                lambda: host.calls_open,
                host.forget_closed_connections,
            )
            nursery.start_soon(
                _watch_staleness, gate, refresher, staleness_limit, config.health.fail_when_stale
            )
            if fleet is not None:
                nursery.start_soon(
                    watch_replication, fleet.replica, gate, config.health.fail_when_stale
                )
            task_status.started(port)

            async for signum in signals:
                name = signal.Signals(signum).name
                if host.draining:
                    logger.info("Received %s again: skipping the rest of the grace period", name)
                    host.skip_grace()
                    continue
                logger.info(
                    "Received %s: draining (grace %ss, %d RPCs in flight)",
                    name,
                    config.server.shutdown_grace,
                    host.in_flight,
                )
                nursery.start_soon(_shutdown, nursery, host, scheduler, refresher, config)


def _tune_garbage_collector() -> None:
    """Keep the cyclic GC off the refresh path.

    A refresh allocates tens of thousands of small tracked objects (rule refs,
    index entries), and the default thresholds trigger collections that rescan
    everything long-lived each time: measured, about half of a 10k-rule refresh's
    CPU. The warm-up has just built the long-lived part (the index, hot refs):
    freeze it out of the collector's view. The thresholds stay at their defaults:
    raising them (50,000 / 20 / 10) saved a few more ms per refresh but let cyclic
    garbage of finished calls pile up (the 2-minute soak crept +2.5%; flat without).
    """
    gc.collect()
    gc.freeze()


async def _shutdown(
    nursery: trio.Nursery,
    host: GrpcHost,
    scheduler: RefreshScheduler,
    refresher: RefreshService,
    config: ServiceConfig,
) -> None:
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


async def _watch_staleness(
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


async def _compact_in_background(bridge: Bridge) -> None:
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


def _bind_error(config: ServiceConfig, exc: OSError) -> str:
    where = f"{config.server.host}:{config.server.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def run_service(config: ServiceConfig) -> int:
    """Run the service in this process; returns the exit code.

    0 after a graceful shutdown, 1 with a one-line reason on stderr when it
    cannot start (also when an internal of a pinned dependency is missing).
    """
    tune_allocator()
    _single_threaded_blas()
    try:
        trio.run(serve_service, config)
    except ConfigError as exc:
        sys.stderr.write(f"guardrefresh: error: {exc}\n")
        return 2
    except (StartupError, DependencyInternalsError) as exc:
        sys.stderr.write(f"guardrefresh: error: {exc}\n")
        return 1
    except BaseExceptionGroup as group:
        startup = group.subgroup((StartupError, DependencyInternalsError))
        if startup is None:
            raise
        first = _leaves(startup)[0]
        sys.stderr.write(f"guardrefresh: error: {first}\n")
        return 1
    return 0


def _single_threaded_blas() -> None:
    """Run numpy's BLAS on the calling thread only, for the life of the process.

    Enforce scores an intent with small matrix products on the event loop thread. A
    multi-threaded BLAS hands each to worker threads that must all get a CPU: on a busy
    machine (measured: 2 cores, load 6) a 1.5 ms decision over 1,000 rules then took up to
    100 ms; single-threaded it stays at 1.3-10 ms.
    """
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out
