"""The service process: one root nursery supervising server, refresher and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from ..bridge import Bridge
from ..config import ServiceConfig
from ..enforce import EnforcementEngine, IntentEncoder, open_intent_encoder
from ..metrics import ServiceMetrics, refresh_error_reason, serve_metrics
from ..refresh import (
    RefreshError,
    RefreshScheduler,
    RefreshService,
    RefreshStats,
    RefreshTrigger,
    open_refresh_service,
)
from ..server import (
    DataPlaneService,
    EdgeLimits,
    EnforceHandler,
    EnforceObserver,
    GrpcHost,
    LoopErrorHandler,
    open_asyncio_loop,
)
from ..storage import StorageError, working_set_path
from ..telemetry import EnforceRecorder, TelemetryStore
from ._background import compact_in_background, shutdown, watch_staleness
from ._fleet import Fleet, FleetStartupError, open_fleet, watch_replication
from ._health import ServingGate
from ._limits import raise_fd_limit
from ._ready import ReadyFile
from ._startup import StartupError, bind_error, edge_limits, open_service_telemetry, security
from ._trim import trim_after_request_bursts

logger = logging.getLogger(__name__)


async def serve_service(
    config: ServiceConfig, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the whole service until SIGTERM/SIGINT has drained it.

    Reports the bound gRPC port through ``task_status`` once the warm-up
    refresh is done, the scheduler runs and the port listens (health is
    SERVING from then on); writes the ready file then too, if one is configured,
    and removes it on the way out. Raises :class:`StartupError` when it cannot start.
    """
    config.security.check()
    config.replication.check()
    fd_limit = raise_fd_limit()
    ready = ReadyFile(config.server.ready_file)
    await ready.clear()
    try:
        bridge = await Bridge.open(
            Path(config.storage.warm_storage),
            hot_capacity=config.storage.hot_capacity,
            max_rules_per_install=config.server.max_rules_per_install,
            make_dirs=True,
            rebuild_damaged=config.replication.enabled,
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
            open_service_telemetry(config, fleet) as telemetry,
        ):
            await _supervise(
                config,
                bridge,
                refresher,
                encoder,
                telemetry,
                fleet,
                edge_limits(config, fd_limit),
                _loop_errors(loop),
                ready,
                task_status,
            )
    finally:
        await ready.remove()
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


async def _supervise(
    config: ServiceConfig,
    bridge: Bridge,
    refresher: RefreshService,
    encoder: IntentEncoder,
    telemetry: TelemetryStore | None,
    fleet: Fleet | None,
    edge_limits: EdgeLimits,
    loop_errors: LoopErrorHandler | None,
    ready: ReadyFile,
    task_status: trio.TaskStatus[int],
) -> None:
    ssl_context, auth = security(config)
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
        held_requests=lambda: host.held_requests,
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
                raise StartupError(bind_error(config, exc)) from None
            metrics_port: int | None = None
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
            # Scripts may wait for this line (tests and benchmarks use --ready-file): keep
            # its shape.
            logger.info("Listening on %s:%d", config.server.host, port)
            # Health is SERVING now (in fleet mode it waits for the first sync).
            await ready.write(config.server.host, port, metrics_port)
            nursery.start_soon(compact_in_background, bridge)
            nursery.start_soon(
                trim_after_request_bursts,
                host.request_budget.released,
                host.calls_ended,
                lambda: host.calls_open,
                host.forget_closed_connections,
            )
            nursery.start_soon(
                watch_staleness, gate, refresher, staleness_limit, config.health.fail_when_stale
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
                nursery.start_soon(shutdown, nursery, host, scheduler, refresher, config)


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
