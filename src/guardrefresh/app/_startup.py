"""What the service checks and builds before it serves: TLS, admin token, edge limits,
the telemetry store, and the one-line reasons it gives when it cannot start."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import attrs

from ..config import ServiceConfig
from ..replication import open_engine
from ..server import (
    AdminAuth,
    EdgeLimits,
    TlsConfigError,
    TokenFileError,
    max_connections_for,
    server_ssl_context,
)
from ..telemetry import TelemetryStore, open_telemetry
from ._fleet import Fleet

__all__ = ["StartupError", "bind_error", "edge_limits", "open_service_telemetry", "security"]

logger = logging.getLogger(__name__)

#: Connections of fleet telemetry's own pool: one writer, two concurrent reads.
TELEMETRY_POOL_SIZE: Final = 3


class StartupError(Exception):
    """The service could not start; ``str()`` is the one-line reason."""


@contextlib.asynccontextmanager
async def open_service_telemetry(
    config: ServiceConfig, fleet: Fleet | None
) -> AsyncIterator[TelemetryStore | None]:
    """The telemetry store, or None with --no-telemetry: in fleet mode the fleet's
    PostgreSQL (every replica reads every replica's sessions), else SQLite.

    Entered before the server starts and left after it has drained, so every session
    of an answered Enforce call is written before the process exits.
    """
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


def security(config: ServiceConfig) -> tuple[ssl.SSLContext | None, AdminAuth | None]:
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


def edge_limits(config: ServiceConfig, fd_limit: int) -> EdgeLimits:
    server = config.server
    return EdgeLimits(
        max_connections=server.max_connections or max_connections_for(fd_limit),
        idle_timeout_s=server.idle_timeout or math.inf,
    )


def bind_error(config: ServiceConfig, exc: OSError) -> str:
    where = f"{config.server.host}:{config.server.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use"
    return f"cannot listen on {where}: {exc.strerror or exc}"
