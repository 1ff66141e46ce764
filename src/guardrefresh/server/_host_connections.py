"""The host's client connections: each one tracked, all closed at the end of a drain.

Each connection's protocol is wrapped (``_dependency_internals.wrap_protocol_factory``)
in a :class:`TrackedConnection`, so that the host knows its transport; at the end of a
drain :meth:`OpenConnections.close_all` closes every one in bounded steps, so that no
client loses a status it was sent and no peer can hold the shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterator

import trio

from . import _dependency_internals as internals
from . import _http2
from ._wakeup import Wakeup

__all__ = ["OpenConnections", "TrackedConnection"]

logger = logging.getLogger(__name__)

# Bounds on closing, so that a peer that stops reading cannot hold the shutdown: how
# long requests read just before get their status written, how long clients get to
# close their side, then how long a closing connection gets to flush before abort.
_STATUS_WAIT_S = 1.0
_POLL_S = 0.005  # grpclib says nothing when a stream is released
_LINGER_S = 1.0
_CLOSE_WAIT_S = 1.0
_ABORT_WAIT_S = 0.5


class TrackedConnection(asyncio.Protocol):
    """Passes everything to grpclib's ``H2Protocol``; tells its :class:`OpenConnections`
    about the transport.

    At the end of a drain the host closes it in steps (:meth:`ignore_input`, then
    :meth:`half_close` once it is not :attr:`busy`) so that no client loses a status
    it was sent.
    """

    def __init__(self, inner: asyncio.Protocol, connections: OpenConnections) -> None:
        self._inner = inner
        self._connections = connections
        self._ignoring_input = False
        self.transport: asyncio.BaseTransport | None = None

    @property
    def h2_protocol(self) -> asyncio.Protocol:
        """grpclib's ``H2Protocol`` of this connection."""
        return self._inner

    def ignore_input(self) -> None:
        """From now on read and drop whatever the client sends; grpclib sees none of it.

        Nothing the client says can matter once every call has ended, and reading on
        is what keeps the kernel from answering it with RST (see :meth:`half_close`).
        """
        self._ignoring_input = True

    @property
    def busy(self) -> bool:
        """Whether grpclib still has a stream open here (an answer not yet written)."""
        return internals.open_streams(self._inner) > 0

    def half_close(self) -> None:
        """Send FIN after everything written; the socket closes when the client's FIN comes.

        Closing the socket at once would be wrong whenever the client is still
        sending (a large request cut off by the drain): the kernel answers unread
        data with RST, the client's next send fails, and its transport is torn down
        before it reads the status waiting in its buffer, so it sees "connection
        lost" instead of UNAVAILABLE. Call :meth:`ignore_input` first; the host
        bounds the wait for the client and then closes (and at last aborts).

        No GOAWAY: grpclib's client fails every stream of a connection the moment a
        GOAWAY arrives, even calls whose reply is already in its buffer.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if isinstance(transport, asyncio.WriteTransport) and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client is gone already (reset): nothing to flush
                transport.abort()
        else:
            # TLS cannot half-close. Its close() sends close_notify and reads (and
            # drops) until the client's close_notify comes back, to the same effect.
            transport.close()

    def close(self) -> None:
        transport = self.transport
        # Never twice: a second close() of a TLS transport (after half_close) makes
        # asyncio drop its SSL protocol, and abort() then does nothing at all.
        if transport is not None and not transport.is_closing():
            transport.close()  # flushes what is still buffered

    def abort(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()  # drops what is still buffered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._connections._made(self)
        self._inner.connection_made(transport)
        _http2.advertise_max_concurrent_streams(
            self._inner, self._connections.max_concurrent_streams
        )

    def limit_streams(self, limit: int) -> None:
        """Advertise ``limit`` as the streams the client may have open at once."""
        try:
            _http2.advertise_max_concurrent_streams(self._inner, limit)
        except Exception as exc:  # a connection whose HTTP/2 state is closed already
            logger.debug("cannot change the stream limit of a connection: %r", exc)

    def data_received(self, data: bytes) -> None:
        if not self._ignoring_input:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._ignoring_input:
            return False  # the client has gone: asyncio closes the transport
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._connections._lost(self)


class OpenConnections:
    """The host's open connections; ``max_concurrent_streams`` is advertised on each."""

    def __init__(self, max_concurrent_streams: int, wakeup: Wakeup) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self._wakeup = wakeup
        self._connections: set[TrackedConnection] = set()
        self._by_transport: dict[Hashable, TrackedConnection] = {}
        self._gone = Wakeup()

    def track(self, h2_protocol: asyncio.Protocol) -> TrackedConnection:
        """The tracking protocol for one new connection with grpclib's ``h2_protocol``."""
        return TrackedConnection(h2_protocol, self)

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[TrackedConnection]:
        return iter(list(self._connections))

    def by_transport(self, transport: Hashable) -> TrackedConnection | None:
        """The open connection whose transport is ``transport``, if any."""
        return self._by_transport.get(transport)

    def _made(self, connection: TrackedConnection) -> None:
        self._connections.add(connection)
        if connection.transport is not None:
            self._by_transport[connection.transport] = connection

    def _lost(self, connection: TrackedConnection) -> None:
        self._connections.discard(connection)
        if connection.transport is not None:
            self._by_transport.pop(connection.transport, None)
        self._gone.set()
        self._wakeup.set()

    async def close_all(self, *, handlers_running: bool) -> None:
        """End every connection, in bounded steps, without losing a status owed to a client.

        ``handlers_running``: some handlers ignored cancellation and may still write,
        while their clients wait for answers that will not come; only closing ends both.
        Otherwise each connection stops reading, gets its last statuses written, FIN,
        and is closed (at last aborted) if its client does not close its side in time.
        """
        connections = self._connections
        if handlers_running:
            for connection in list(connections):
                connection.close()
        else:
            for connection in list(connections):
                connection.ignore_input()
            # A request read just before that (one the drain rejects, mostly) still
            # gets its status written; grpclib raises on a write after the FIN.
            with trio.move_on_after(_STATUS_WAIT_S):
                while any(connection.busy for connection in connections):  # noqa: ASYNC110
                    await trio.sleep(_POLL_S)
            for connection in list(connections):
                connection.half_close()
            if not await self._gone_within(_LINGER_S):
                logger.info(
                    "drain: closing %d connections whose clients did not close their side",
                    len(connections),
                )
                for connection in list(connections):
                    connection.close()
        if not await self._gone_within(_CLOSE_WAIT_S):
            logger.warning(
                "drain: %d connections did not flush in %.1f s; aborting them",
                len(connections),
                _CLOSE_WAIT_S,
            )
            for connection in list(connections):
                connection.abort()
            await self._gone_within(_ABORT_WAIT_S)

    async def _gone_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every connection to be lost; whether they were."""
        with trio.move_on_after(seconds):
            await self._gone.wait_for(lambda: not self._connections)
        return not self._connections
