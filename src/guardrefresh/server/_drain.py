"""Every access to grpclib internals the host needs, and nothing else.

grpclib 0.4.9 has no graceful shutdown (``Server.close()`` cancels handlers without
telling their clients and leaves open connections serving), no request size limit, and
answers a call whose deadline passed before it started with UNKNOWN "Internal Server
Error" (logging an ERROR traceback per call); and the h2 connections it makes remember
their last 65,536 closed streams (12-15 MB each). The host mends all four through a few
private attributes, which also let it bound what each call may cost before its handler
runs (``_intake``: request reads, the call's connection, the advertised stream limit). They are reached only through the functions below, one comment per
access, so that an upgrade breaks in one place; :func:`check_internals` runs before the
server binds and ``tests/test_grpc_host.py`` has a canary test for each attribute, so a
breaking upgrade fails loudly rather than silently losing the drain. grpclib is pinned
exactly (``grpclib==0.4.9``), h2 to its major (``h2>=4.1,<5``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

import grpclib
import grpclib.metadata
import grpclib.protocol
import grpclib.server
import grpclib.utils
from h2.connection import H2Connection
from h2.settings import SettingCodes
from h2.utilities import SizeLimitDict

__all__ = [
    "GRPCLIB_VERSION",
    "ExpiredDeadlineWrapper",
    "advertise_max_concurrent_streams",
    "answer_expired_deadlines",
    "check_internals",
    "close_listener",
    "closed_streams_remembered",
    "connection_of",
    "forget_closed_connections",
    "intercept_request_reads",
    "listening_port",
    "open_streams",
    "remember_closed_streams",
    "trailers_sent",
    "wrap_protocol_factory",
]

logger = logging.getLogger(__name__)

#: The grpclib release these internals were read from.
GRPCLIB_VERSION = "0.4.9"


def check_internals(server: grpclib.server.Server) -> None:
    """Raise :exc:`RuntimeError` unless the internals used here look as expected.

    Called on a constructed, not yet started server. A started one is checked
    again by :func:`listening_port`.
    """
    problems = []
    if grpclib.__version__ != GRPCLIB_VERSION:
        problems.append(f"grpclib is {grpclib.__version__}, expected {GRPCLIB_VERSION}")
    # Server._protocol_factory: the per-connection factory that start() hands to
    # loop.create_server(); the instance attribute shadows the method.
    if not callable(getattr(server, "_protocol_factory", None)):
        problems.append("Server._protocol_factory is missing")
    # Server._server: None until start() binds, then the asyncio.Server.
    if not hasattr(server, "_server") or server._server is not None:
        problems.append("Server._server is missing or not None before start()")
    # server.Stream._send_trailing_metadata_done: class-level default False, set
    # True once trailers went out.
    if getattr(grpclib.server.Stream, "_send_trailing_metadata_done", None) is not False:
        problems.append("server.Stream._send_trailing_metadata_done is missing")
    # server.DeadlineWrapper: the name request_handler() looks up for every call
    # with a deadline; answer_expired_deadlines() rebinds it.
    if getattr(grpclib.server, "DeadlineWrapper", None) not in (
        grpclib.utils.DeadlineWrapper,
        ExpiredDeadlineWrapper,
    ):
        problems.append("server.DeadlineWrapper is missing")
    # Server.__gc_collect__: grpclib's own sweep of closed connections' handlers.
    if not callable(getattr(server, "__gc_collect__", None)):
        problems.append("Server.__gc_collect__ is missing")
    # protocol.Stream.recv_data(size): every read of a request message goes through it.
    if not callable(getattr(grpclib.protocol.Stream, "recv_data", None)):
        problems.append("protocol.Stream.recv_data is missing")
    # h2's H2Connection._closed_streams: a SizeLimitDict (its limit in _size_limit),
    # see remember_closed_streams.
    closed = getattr(H2Connection(), "_closed_streams", None)
    if not isinstance(closed, SizeLimitDict) or not hasattr(closed, "_size_limit"):
        problems.append("h2 H2Connection._closed_streams is not a SizeLimitDict")
    if problems:
        raise RuntimeError(
            "guardrefresh.server relies on grpclib internals that changed: " + "; ".join(problems)
        )


class ExpiredDeadlineWrapper(grpclib.utils.DeadlineWrapper):  # type: ignore[misc]
    """grpclib's per-call deadline wrapper, mended so that every call whose deadline
    passes ends the same way: INFO "Deadline exceeded" and status DEADLINE_EXCEEDED.

    grpclib gets two cases wrong, each with an ERROR traceback per call (so a client
    sending tiny deadlines could fill the log):

    - A call already past its deadline when it starts: grpclib's ``start()`` raises
      ``TimeoutError`` without marking the wrapper cancelled, so ``request_handler``
      reports "Timeout occurred" and answers UNKNOWN "Internal Server Error".
    - A handler that goes on after its deadline fired instead of ending with the
      ``CancelledError`` (an install waiting on the Trio side commits regardless, then
      finds the client gone): grpclib reports "Failed to handle cancellation". Here
      finishing work the client no longer waits for is legitimate, not a bug.
    """

    cancelled: bool | None
    cancel_failed: bool | None

    @contextlib.contextmanager
    def start(self, deadline: grpclib.metadata.Deadline) -> Iterator[None]:
        timeout = deadline.time_remaining()
        if not timeout:
            self.cancelled = True
            raise TimeoutError("Deadline exceeded")
        timer = asyncio.get_running_loop().call_later(
            timeout, self.cancel, TimeoutError("Deadline exceeded")
        )
        try:
            yield
        finally:
            timer.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc_val, exc_tb)
        finally:
            if self.cancel_failed:
                logger.debug("call went on past its deadline and ended with %r", exc_val)
                self.cancel_failed = False


def answer_expired_deadlines() -> None:
    """Make grpclib servers in this process answer expired calls DEADLINE_EXCEEDED.

    Idempotent. Process-wide: grpclib offers no per-server hook, and no server wants
    grpclib's behaviour (see :class:`ExpiredDeadlineWrapper`).
    """
    # server.DeadlineWrapper: request_handler() constructs one per call with a
    # deadline, looking the name up in grpclib.server's globals each time.
    grpclib.server.DeadlineWrapper = ExpiredDeadlineWrapper


def wrap_protocol_factory(
    server: grpclib.server.Server,
    wrap: Callable[[asyncio.Protocol], asyncio.Protocol],
) -> None:
    """Make every connection's protocol pass through ``wrap`` (before start())."""
    # Server._protocol_factory: start() passes self._protocol_factory to
    # loop.create_server(); grpclib offers no hook to see connections otherwise.
    original: Callable[[], asyncio.Protocol] = server._protocol_factory

    def factory() -> asyncio.Protocol:
        return wrap(original())

    server._protocol_factory = factory


def _asyncio_server(server: grpclib.server.Server) -> asyncio.Server:
    # Server._server: the asyncio.Server behind the listening sockets; the public
    # close() would also cancel every running handler without answering it.
    listener = server._server
    if not isinstance(listener, asyncio.Server):
        raise RuntimeError(f"grpclib Server._server is {listener!r}, not an asyncio server")
    return listener


def listening_port(server: grpclib.server.Server) -> int:
    """The port of the first listening socket of a started server."""
    sockets = _asyncio_server(server).sockets
    if not sockets:
        raise RuntimeError("grpclib server has no listening socket")
    port: int = sockets[0].getsockname()[1]
    return port


def close_listener(server: grpclib.server.Server) -> None:
    """Close the listening sockets only: running handlers and open connections go on.

    Idempotent; a no-op on a server that never bound.
    """
    # Server._server: see _asyncio_server; None when start() never completed.
    if server._server is not None:
        _asyncio_server(server).close()


def forget_closed_connections(server: grpclib.server.Server) -> None:
    """Drop grpclib's references to the calls of connections that have closed.

    grpclib keeps each closed connection's handler, with the tasks of the calls it
    cancelled (and through their exceptions' tracebacks, the calls' streams and buffered
    request bytes), until ten more connections have been made. After a flood nothing
    may come: this sweeps them now. The calls' objects form reference cycles, so the
    cyclic GC frees them afterwards.
    """
    # Server.__gc_collect__: keeps only the handlers not closed or with tasks still
    # running (a closed handler's check_closed() also forgets its finished tasks).
    server.__gc_collect__()


def open_streams(protocol: asyncio.Protocol) -> int:
    """How many HTTP/2 streams grpclib still tracks on one server connection.

    ``protocol`` is the connection's ``H2Protocol``. A server stream is released
    when its handler has ended and written its status, rejected calls included.
    """
    # H2Protocol.processor: the EventsProcessor set by connection_made(); its
    # ``streams`` dict holds every stream not yet released.
    processor = getattr(protocol, "processor", None)
    return len(processor.streams) if processor is not None else 0


def _h2_connection(protocol: asyncio.Protocol) -> H2Connection:
    # H2Protocol.connection: grpclib's Connection, set by connection_made(); its
    # _connection is the h2 state machine of this HTTP/2 connection.
    h2_connection = protocol.connection._connection  # type: ignore[attr-defined]
    if not isinstance(h2_connection, H2Connection):
        raise RuntimeError(f"grpclib connection wraps {h2_connection!r}, not an H2Connection")
    return h2_connection


def remember_closed_streams(protocol: asyncio.Protocol, count: int) -> None:
    """Make one server connection remember only its ``count`` latest closed streams.

    ``protocol`` is the connection's ``H2Protocol``, right after ``connection_made()``.
    h2 remembers how each closed stream ended, so that a frame the peer sent before it
    learnt of the close is handled gracefully (dropped after a reset; answered with
    RST_STREAM otherwise); a frame for a stream it has forgotten gets RST_STREAM
    STREAM_CLOSED, which ends nothing else. h2 keeps the last 2**16 of them per
    connection, about 12-15 MB per long-lived connection once that many calls have
    gone through it; the soak saw memory climb by 2 MB a minute for that alone.
    nghttp2 keeps as many as streams may be open at once.
    """
    # H2Connection._closed_streams: a SizeLimitDict sized by the class constant
    # MAX_CLOSED_STREAMS when the connection is made; its _size_limit is read on
    # every insertion, so lowering it takes effect from the next closed stream.
    closed = _h2_connection(protocol)._closed_streams
    if not isinstance(closed, SizeLimitDict):
        raise RuntimeError(f"h2 keeps closed streams in {type(closed)!r}, not a SizeLimitDict")
    closed._size_limit = count


def closed_streams_remembered(protocol: asyncio.Protocol) -> int:
    """How many closed streams one server connection's h2 state remembers now."""
    return len(_h2_connection(protocol)._closed_streams)


def trailers_sent(stream: grpclib.server.Stream[Any, Any]) -> bool:
    """Whether the call's status already went to the client."""
    # Stream._send_trailing_metadata_done: set by send_trailing_metadata(); no
    # public accessor. A call that already answered is done from its client's view.
    return bool(stream._send_trailing_metadata_done)


def connection_of(stream: grpclib.server.Stream[Any, Any]) -> asyncio.BaseTransport:
    """The transport of the connection a call came on (the same for all its calls)."""
    # Stream._stream: the call's grpclib.protocol.Stream; its _transport is the
    # asyncio transport of the client's connection, set at construction.
    transport = stream._stream._transport
    if not isinstance(transport, asyncio.BaseTransport):
        raise RuntimeError(f"grpclib stream has transport {transport!r}")
    return transport


def intercept_request_reads(
    stream: grpclib.server.Stream[Any, Any],
    reader: Callable[[Callable[[int], Awaitable[bytes]], int], Awaitable[bytes]],
) -> None:
    """Make every read of this call's request bytes go through ``reader(read, size)``.

    grpclib reads each message as ``recv_data(5)`` (compression flag and length) and
    then ``recv_data(length)``, buffering the whole body; ``reader`` gets grpclib's own
    ``read`` and the size asked for, and may refuse (raise) before anything is read.
    """
    # Stream._stream: the call's grpclib.protocol.Stream; recv_message() reads
    # through its recv_data(). Patching this one instance leaves other calls alone.
    h2_stream = stream._stream
    # Weakly: the patch lives on the stream, and a strong bound method would make
    # every call's stream (its buffers, queues, events) a reference cycle, freed only
    # by the cyclic GC instead of when the call ends.
    recv_data: weakref.WeakMethod[Callable[[int], Awaitable[bytes]]]
    recv_data = weakref.WeakMethod(h2_stream.recv_data)

    async def read(size: int) -> bytes:
        method = recv_data()
        assert method is not None, "a stream is alive while it is read from"
        return await method(size)

    async def intercepted_recv_data(size: int) -> bytes:
        return await reader(read, size)

    h2_stream.recv_data = intercepted_recv_data


def advertise_max_concurrent_streams(protocol: asyncio.Protocol, limit: int) -> None:
    """Tell the client of a new connection how many streams it may have open at once.

    ``protocol`` is the connection's ``H2Protocol``, right after ``connection_made()``
    (which has sent h2's initial SETTINGS, with h2's default of 100). A different
    ``limit`` goes out in a second SETTINGS frame at once; h2 enforces it once the client
    acknowledges it (RFC 9113 section 6.5.3: a conforming client does so at once), and
    until then the 100 of the first frame. A client that opens more streams than it was
    allowed breaks the protocol: h2 raises, and grpclib closes that connection.
    """
    h2_connection = _h2_connection(protocol)
    if h2_connection.local_settings.max_concurrent_streams == limit:
        return
    h2_connection.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
    # H2Protocol.connection: grpclib's Connection (see _h2_connection); flush() writes
    # what h2 has queued to the transport, as grpclib does after each event.
    protocol.connection.flush()  # type: ignore[attr-defined]
