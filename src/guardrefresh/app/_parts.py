"""The parts of the service built from its configuration: fleet, telemetry store,
TLS and admin auth, connection limits, and the adapters between them and the metrics.

Each turns a failure the operator can fix into :class:`StartupError` with a one-line
reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import attrs

from ..bridge import Bridge
from ..config import ServiceConfig
from ..metrics import ServiceMetrics, refresh_error_reason
from ..refresh import RefreshService, RefreshStats
from ..replication import open_engine
from ..server import (
    AdminAuth,
    EdgeLimits,
    LoopErrorHandler,
    TlsConfigError,
    TokenFileError,
    max_connections_for,
    server_ssl_context,
)
from ..telemetry import TelemetryStore, open_telemetry
from ._errors import StartupError
from ._fleet import Fleet, FleetStartupError, open_fleet

__all__ = [
    "TELEMETRY_POOL_SIZE",
    "RefreshMetrics",
    "edge_limits_of",
    "loop_error_handler",
    "open_service_fleet",
    "open_service_telemetry",
    "security_of",
]

logger = logging.getLogger(__name__)

#: Connections of fleet telemetry's own pool: one writer, two concurrent reads.
TELEMETRY_POOL_SIZE: Final = 3


def loop_error_handler(loop: asyncio.AbstractEventLoop) -> LoopErrorHandler | None:
    """The counters of the loop's error handler (installed by ``open_asyncio_loop``)."""
    handler = loop.get_exception_handler()
    return handler if isinstance(handler, LoopErrorHandler) else None


@contextlib.asynccontextmanager
async def open_service_fleet(
    config: ServiceConfig, bridge: Bridge, refresher: RefreshService
) -> AsyncIterator[Fleet | None]:
    try:
        async with open_fleet(config.replication, bridge, refresher) as fleet:
            yield fleet
    except FleetStartupError as exc:
        raise StartupError(str(exc)) from None


@contextlib.asynccontextmanager
async def open_service_telemetry(
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


class RefreshMetrics:
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


def security_of(config: ServiceConfig) -> tuple[ssl.SSLContext | None, AdminAuth | None]:
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


def edge_limits_of(config: ServiceConfig, fd_limit: int) -> EdgeLimits:
    server = config.server
    return EdgeLimits(
        max_connections=server.max_connections or max_connections_for(fd_limit),
        idle_timeout_s=server.idle_timeout or math.inf,
    )
