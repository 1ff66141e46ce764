"""The fleet's PostgreSQL database as seen from Trio: :class:`Engine`, :func:`open_engine`.

asyncpg is an asyncio library; the service runs on Trio with trio-asyncio's loop (which
the gRPC host needs anyway). This module is the one place that crosses from Trio to
asyncio for the database: :meth:`Engine.run` takes an asyncio-side function of a pooled
connection and runs it there; everything around it stays Trio. Functions given to
:meth:`Engine.run` must never cross back (calling a Trio-to-asyncio wrapper from inside
asyncio code ended in ``TrioInternalError`` here).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import asyncpg
import trio
import trio_asyncio

from ._errors import EngineUnavailableError
from ._settings import EngineSettings

__all__ = ["Engine", "open_engine"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: What a database or network failure looks like from asyncpg (and what a connection
#: attempt to a stopped server raises); everything else is a bug and propagates.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


#: Failures that mean the connection itself is gone.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)


class Engine:
    """A small asyncpg pool on the trio-asyncio loop; use :func:`open_engine`."""

    def __init__(self, pool: asyncpg.Pool, settings: EngineSettings) -> None:
        self._pool = pool
        self.settings = settings

    @property
    def masked_dsn(self) -> str:
        return self.settings.masked_dsn

    async def run(
        self, fn: Callable[..., Awaitable[T]], *args: Any, what: str = "fleet database call"
    ) -> T:
        """Run ``await fn(connection, *args)`` (asyncio code) on a pooled connection.

        Returns its result in Trio. A connection or database failure raises
        :class:`EngineUnavailableError` (``what`` failed: reason), and the pool's other
        idle connections are renewed on their next use (they likely died with it);
        errors ``fn`` raises itself (domain errors) propagate unchanged. On
        cancellation the call is cancelled in asyncio (an open transaction is rolled
        back by the server).
        """
        try:
            result: T = await trio_asyncio.aio_as_trio(self._call)(fn, *args)
        except _UNAVAILABLE as exc:
            raise EngineUnavailableError(f"{what} failed: {describe(exc)}") from exc
        return result

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            async with self._pool.acquire(timeout=self.settings.connect_timeout_s) as connection:
                return await fn(connection, *args)
        except _CONNECTION_LOST:
            # The other idle connections most likely died with this one (a restart):
            # renew them on their next use rather than fail one call on each.
            await self._pool.expire_connections()
            raise

    @contextlib.asynccontextmanager
    async def listen(
        self, channel: str, on_notify: Callable[[str], None], on_lost: Callable[[], None]
    ) -> AsyncIterator[None]:
        """LISTEN on ``channel`` on a connection of its own for the block.

        ``on_notify(payload)`` is called for every notification, ``on_lost()`` when the
        connection ends; both synchronously on the Trio thread (from an asyncio
        callback: they must not block or await). Raises
        :class:`EngineUnavailableError` when the connection or the LISTEN fails.
        Notifications sent while no listener is connected are lost: pull after this.
        """

        def notified(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            on_notify(payload)

        def terminated(_conn: object) -> None:
            on_lost()

        try:
            connection = await trio_asyncio.aio_as_trio(self._connect)()
        except _UNAVAILABLE as exc:
            raise EngineUnavailableError(f"listening failed: {describe(exc)}") from exc
        try:
            connection.add_termination_listener(terminated)
            try:
                await trio_asyncio.aio_as_trio(connection.add_listener)(channel, notified)
            except _UNAVAILABLE as exc:
                raise EngineUnavailableError(f"listening failed: {describe(exc)}") from exc
            yield
        finally:
            connection.remove_termination_listener(terminated)
            with trio.CancelScope(shield=True):
                await _close(connection)

    async def _connect(self) -> asyncpg.Connection:
        settings = self.settings
        connection = await asyncpg.connect(
            settings.dsn,
            password=settings.password,
            timeout=settings.connect_timeout_s,
            command_timeout=settings.command_timeout_s,
            server_settings=_server_settings(settings),
        )
        _set_keepalives(connection, settings)
        return connection


async def _close(connection: asyncpg.Connection) -> None:
    """Close politely within a second, else drop the socket."""
    with trio.move_on_after(1.0) as scope:
        with contextlib.suppress(*_UNAVAILABLE):
            await trio_asyncio.aio_as_trio(connection.close)(timeout=1.0)
    if scope.cancelled_caught or not connection.is_closed():
        connection.terminate()


def _server_settings(settings: EngineSettings) -> dict[str, str]:
    # The server probes our end too: a replica that vanished releases its locks.
    return {
        "application_name": "guardrefresh",
        "tcp_keepalives_idle": str(settings.keepalives_idle_s),
        "tcp_keepalives_interval": str(settings.keepalives_interval_s),
        "tcp_keepalives_count": str(settings.keepalives_count),
        "tcp_user_timeout": str(settings.tcp_user_timeout_ms),
    }


def _set_keepalives(connection: asyncpg.Connection, settings: EngineSettings) -> None:
    """libpq's keepalives and tcp_user_timeout on the client socket (TCP only).

    asyncpg has no options for these; its transport's socket is reached through
    asyncio's public ``get_extra_info`` (``_transport`` is asyncpg's attribute: when
    a release drops it, this logs once at DEBUG and the server-side settings remain).
    """
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        if transport is None:
            logger.debug("asyncpg connection without _transport: client keepalives not set")
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), settings.keepalives_idle_s),
        (
            socket.IPPROTO_TCP,
            getattr(socket, "TCP_KEEPINTVL", None),
            settings.keepalives_interval_s,
        ),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), settings.keepalives_count),
        (
            socket.IPPROTO_TCP,
            getattr(socket, "TCP_USER_TIMEOUT", None),
            settings.tcp_user_timeout_ms,
        ),
    ]
    for level, option, value in options:
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)


def describe(exc: BaseException) -> str:
    """A one-line reason for a database failure (never the DSN or a password)."""
    if isinstance(exc, asyncpg.PostgresError):
        text = str(exc).strip() or type(exc).__name__
        state = getattr(exc, "sqlstate", None)
        return f"{text} (SQLSTATE {state})" if state else text
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).strip() or type(exc).__name__


@contextlib.asynccontextmanager
async def open_engine(settings: EngineSettings) -> AsyncIterator[Engine]:
    """An :class:`Engine` for the block; the pool is closed when it is left.

    Needs a trio-asyncio loop (``guardrefresh.server.open_asyncio_loop``) around it.
    Connects lazily: opening succeeds while the database is down (calls then raise
    :class:`EngineUnavailableError` until it is back).
    """

    async def init(connection: asyncpg.Connection) -> None:
        _set_keepalives(connection, settings)

    pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
        settings.dsn,
        password=settings.password,
        min_size=0,
        max_size=settings.pool_size,
        timeout=settings.connect_timeout_s,
        command_timeout=settings.command_timeout_s,
        server_settings=_server_settings(settings),
        init=init,
    )
    try:
        yield Engine(pool, settings)
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(2.0) as scope:
                with contextlib.suppress(*_UNAVAILABLE):
                    await trio_asyncio.aio_as_trio(pool.close)()
            if scope.cancelled_caught:
                pool.terminate()
