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

The connection guard (``_connections``) reaches the same per-connection objects for the
HTTP/2 edge: grpclib raises ``NotImplementedError`` on frame types it has no handler for
(RFC 9113 says they MUST be ignored), offers no hook to see stream resets (rapid reset,
CVE-2023-44487) and none to send GOAWAY: :func:`ignore_unknown_frames`,
:func:`observe_stream_resets` and :func:`send_goaway`; and h2 buffers a frame whole
before it checks its length against SETTINGS_MAX_FRAME_SIZE, so a client announcing a
16 MiB frame had the server buffer up to 16 MiB first: :func:`oversized_frame_pending`.
grpclib also logs an ERROR traceback for every request whose headers lack ``:method``
or ``:path`` (a KeyError), and the generated handlers for every unary request that ends
without a message (an AssertionError, answered UNKNOWN): :func:`refuse_malformed_requests`
and :func:`require_request_message` answer those as the client's errors.
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
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    AlternativeServiceAvailable,
    RequestReceived,
    StreamReset,
    UnknownFrameReceived,
)
from h2.exceptions import ProtocolError
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
    "ignore_unknown_frames",
    "intercept_request_reads",
    "listening_port",
    "observe_stream_resets",
    "open_streams",
    "oversized_frame_pending",
    "refuse_malformed_requests",
    "remember_closed_streams",
    "require_request_message",
    "send_goaway",
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
    # h2's H2Connection.incoming_buffer._data: the bytes received and not yet parsed
    # into frames (see oversized_frame_pending).
    if not isinstance(getattr(H2Connection().incoming_buffer, "_data", None), bytearray):
        problems.append("h2 H2Connection.incoming_buffer._data is not a bytearray")
    # protocol.EventsProcessor.processors: the dict from h2 event class to handler that
    # process() looks each event up in (KeyError -> NotImplementedError).
    processors = getattr(grpclib.protocol.EventsProcessor(None, None), "processors", None)
    if not isinstance(processors, dict) or StreamReset not in processors:
        problems.append("protocol.EventsProcessor.processors is not a dict of h2 events")
    # protocol.H2Protocol.connection / .processor: set by connection_made().
    annotations = getattr(grpclib.protocol.H2Protocol, "__annotations__", {})
    if not {"connection", "processor"} <= set(annotations):
        problems.append("protocol.H2Protocol has no connection/processor attributes")
    if not callable(getattr(grpclib.protocol.Connection, "flush", None)):
        problems.append("protocol.Connection.flush is missing")
    # server.Stream._cardinality: the method's grpclib.const.Cardinality, set in
    # __init__ (see require_request_message).
    if "_cardinality" not in grpclib.server.Stream.__init__.__code__.co_names:
        problems.append("server.Stream._cardinality is missing")
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


def _processors(protocol: asyncio.Protocol) -> dict[type[Any], Callable[[Any], None]]:
    # H2Protocol.processor: the EventsProcessor set by connection_made(); its
    # ``processors`` dict maps each h2 event class to its handler, and process()
    # raises NotImplementedError for a class that is not in it. Changing the dict
    # of this one connection's processor leaves other connections alone.
    processors = protocol.processor.processors  # type: ignore[attr-defined]
    if not isinstance(processors, dict):
        raise RuntimeError(f"grpclib EventsProcessor.processors is {processors!r}, not a dict")
    return processors


def _ignore(_event: object) -> None:
    pass


def ignore_unknown_frames(protocol: asyncio.Protocol) -> None:
    """Make one server connection ignore frames of unknown types, and ALTSVC frames.

    ``protocol`` is the connection's ``H2Protocol``, after ``connection_made()``. h2
    reports an extension frame as ``UnknownFrameReceived`` (and an ALTSVC frame a
    client has no business sending as ``AlternativeServiceAvailable``); grpclib has
    no handler for either and raises ``NotImplementedError`` from ``data_received``.
    RFC 9113 section 5.5: implementations MUST ignore unknown frame types.
    """
    processors = _processors(protocol)
    processors[UnknownFrameReceived] = _ignore
    processors[AlternativeServiceAvailable] = _ignore


def observe_stream_resets(protocol: asyncio.Protocol, observe: Callable[[], None]) -> None:
    """Call ``observe()`` for every RST_STREAM the client sends on this connection.

    ``protocol`` is the connection's ``H2Protocol``, after ``connection_made()``.
    ``observe`` runs after grpclib handled the reset (cancelled the call), inside
    ``data_received``; it must not raise.
    """
    processors = _processors(protocol)
    handle = processors[StreamReset]

    def process_stream_reset(event: StreamReset) -> None:
        handle(event)
        if event.remote_reset:
            observe()

    processors[StreamReset] = process_stream_reset


def send_goaway(protocol: asyncio.Protocol, error_code: ErrorCodes) -> bool:
    """Write a GOAWAY frame with ``error_code`` on one server connection; whether it could.

    The last stream id is the highest the client opened, so the client knows that
    nothing it sent later was processed. Writing does not close the transport: the
    caller does that. False when the HTTP/2 state refuses (already closed) or the
    connection was never set up.
    """
    if getattr(protocol, "connection", None) is None:
        return False
    try:
        _h2_connection(protocol).close_connection(error_code=error_code)
        # H2Protocol.connection.flush(): writes what h2 has queued to the transport.
        protocol.connection.flush()  # type: ignore[attr-defined]
    except (ProtocolError, RuntimeError):
        return False
    return True


def oversized_frame_pending(protocol: asyncio.Protocol) -> bool:
    """Whether the frame the client is in the middle of sending is over the size we allow.

    ``protocol`` is the connection's ``H2Protocol``. h2 parses a frame only once all of
    it has arrived and checks its length against our SETTINGS_MAX_FRAME_SIZE only
    then, so until then it buffers up to the 16 MiB a frame header can announce. This
    reads the header of the incomplete frame waiting in h2's buffer instead.
    """
    h2_connection = _h2_connection(protocol)
    # H2Connection.incoming_buffer._data: the FrameBuffer's unparsed bytes (after the
    # preface); receive_data() leaves only an incomplete last frame in it.
    pending = h2_connection.incoming_buffer._data
    if len(pending) < 3:
        return False
    return int.from_bytes(pending[:3], "big") > h2_connection.max_inbound_frame_size


#: Pseudo-headers without which grpclib's request handler fails with a KeyError.
_REQUIRED_PSEUDO_HEADERS = frozenset({":method", ":path"})


def refuse_malformed_requests(protocol: asyncio.Protocol) -> None:
    """Reset, with PROTOCOL_ERROR, request streams whose headers lack ``:method`` or
    ``:path``, before grpclib sees them.

    ``protocol`` is the connection's ``H2Protocol``, after ``connection_made()``. RFC
    9113 section 8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR.
    grpclib would look the headers up unguarded and log "Server error" with a
    traceback for each such request.
    """
    processors = _processors(protocol)
    handle = processors[RequestReceived]

    def process_request_received(event: RequestReceived) -> None:
        names = {_text(name) for name, _value in event.headers or ()}
        if names >= _REQUIRED_PSEUDO_HEADERS:
            handle(event)
            return
        assert event.stream_id is not None
        _h2_connection(protocol).reset_stream(event.stream_id, ErrorCodes.PROTOCOL_ERROR)
        # H2Protocol.connection.flush(): see send_goaway.
        protocol.connection.flush()  # type: ignore[attr-defined]

    processors[RequestReceived] = process_request_received


def _text(name: str | bytes) -> str:
    return name.decode("ascii", "replace") if isinstance(name, bytes) else name


def require_request_message(stream: grpclib.server.Stream[Any, Any]) -> None:
    """Answer INVALID_ARGUMENT when a unary request ends without its message.

    For a method whose client sends one message, grpclib's ``recv_message()``
    returns None when the request stream ends before any message, and the generated
    handlers assert it is not None: grpclib then logs "Application error" with a
    traceback and answers UNKNOWN. Client-streaming methods keep None (end of input).
    """
    # Stream._cardinality: the method's Cardinality; no public accessor.
    if stream._cardinality.client_streaming:
        return
    recv_message: weakref.WeakMethod[Callable[[], Awaitable[Any]]]
    recv_message = weakref.WeakMethod(stream.recv_message)  # see intercept_request_reads

    async def recv_required_message() -> Any:
        read = recv_message()
        assert read is not None, "a stream is alive while it is read from"
        message = await read()
        if message is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "the request ended without a message")
        return message

    stream.recv_message = recv_required_message
