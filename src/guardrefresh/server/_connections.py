"""The connection layer of the HTTP/2 edge: no one connection can stop or starve the rest.

:class:`ConnectionGuard` is the host's; it wraps every accepted connection's protocol
stack in a :class:`GuardedConnection` (outermost, before the host's drain tracking and
grpclib's ``H2Protocol``), which:

- **contains errors**: whatever a callback below raises (grpclib on an HTTP/2 event it
  has no handler for, h2 on a frame it cannot parse, a bug of ours) closes that
  connection only, with one WARNING line naming the peer (throttled; the rest counted);
- **ignores unknown frame types** (RFC 9113 §5.5) instead of failing on them, and
  resets request streams without ``:method`` or ``:path`` (RFC 9113 §8.1.1);
- **bounds stream resets** (rapid reset, CVE-2023-44487): a token bucket per connection,
  :attr:`EdgeLimits.reset_burst` resets at once and :attr:`EdgeLimits.reset_rate`
  per second after that (nghttp2's defaults); beyond it the connection gets GOAWAY
  ENHANCE_YOUR_CALM and is closed;
- **bounds frames**: a frame announced longer than SETTINGS_MAX_FRAME_SIZE gets GOAWAY
  FRAME_SIZE_ERROR as soon as its header arrives, not after 16 MiB are buffered;
- **bounds unread output**: a client that keeps sending frames that need an answer
  (PING, SETTINGS) while it reads nothing gets GOAWAY ENHANCE_YOUR_CALM and is closed
  once more than :attr:`EdgeLimits.max_unread_output_bytes` wait for it;
- **caps connections**: beyond :attr:`EdgeLimits.max_connections` open at once, a new
  connection is closed as soon as it is accepted (its descriptor freed at once);
- **closes idle connections**: one with no open stream for
  :attr:`EdgeLimits.idle_timeout_s` gets GOAWAY NO_ERROR and is closed;
- **holds requests that came without their body** as headers, not calls, until the
  body begins (``_held_requests``): a stalled stream costs h2's state, not a call.

A connection the guard closes stops being read, gets FIN after its GOAWAY, and is
aborted :data:`LINGER_S` later if its client has not closed its side by then.
"""

from __future__ import annotations

import asyncio
import logging
import math

import trio
from grpclib.const import Status
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hyperframe.exceptions import HyperframeError

from . import _http2
from ._dependency_internals import open_streams
from ._edge_limits import EdgeCounts, EdgeLimits
from ._held_requests import HeldRequests
from ._throttle import LogThrottle

__all__ = [
    "LINGER_S",
    "ConnectionGuard",
    "GuardedConnection",
]

logger = logging.getLogger(__name__)

#: Seconds a closed connection's client gets to read the GOAWAY and close its side.
LINGER_S = 1.0
#: At most one WARNING per this many seconds for each kind of closed connection.
LOG_INTERVAL_S = 10.0


def _is_protocol_error(exc: BaseException) -> bool:
    return isinstance(exc, ProtocolError | HyperframeError)


class GuardedConnection(asyncio.Protocol):
    """One connection as the guard sees it; passes every callback on to ``outer``.

    ``outer`` is the protocol stack to run (the host's tracker around grpclib's
    protocol), ``h2`` is grpclib's ``H2Protocol`` at its bottom.
    """

    def __init__(
        self, outer: asyncio.Protocol, h2: asyncio.Protocol, guard: ConnectionGuard
    ) -> None:
        self._outer = outer
        self._h2 = h2
        self._guard = guard
        self.transport: asyncio.BaseTransport | None = None
        self.peer = "?"
        #: Set once the guard closed (or refused) it: input is dropped from then on.
        self.shut = False
        self._admitted = False
        #: Trio time since when no stream has been seen open; None while one is.
        self.idle_since: float | None = None
        self._reset_tokens = float(guard.limits.reset_burst)
        self._reset_at = 0.0
        self._calm_reason: str | None = None
        self._held: HeldRequests | None = None

    # -------------------------------------------------------------- callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        if not self._guard._admit(self):
            self.shut = True
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()  # nothing to say yet: free the descriptor now
            return
        self._admitted = True
        self.idle_since = self._reset_at = trio.current_time()
        try:
            self._outer.connection_made(transport)
            _http2.ignore_unknown_frames(self._h2)
            # Installed before the malformed-request check, which then runs first.
            self._held = HeldRequests(self._h2, timeout_s=self._guard.request_timeout_s)
            _http2.refuse_malformed_requests(self._h2)
            _http2.observe_stream_resets(self._h2, self._stream_reset)
        except Exception as exc:
            self._failed(exc, "connection_made")

    def data_received(self, data: bytes) -> None:
        if self.shut:
            return
        transport = self.transport
        unread = _write_buffer_size(transport)
        try:
            self._outer.data_received(data)
        except Exception as exc:
            self._failed(exc, "data_received")
            return
        if self._calm_reason is not None:
            self._calm(self._calm_reason)
            return
        if _http2.oversized_frame_pending(self._h2):
            self._guard.counts.error_closed += 1
            self._guard._log_error(self, "it sent a frame over SETTINGS_MAX_FRAME_SIZE")
            self.close(ErrorCodes.FRAME_SIZE_ERROR)
            return
        now_unread = _write_buffer_size(transport)
        if now_unread > self._guard.limits.max_unread_output_bytes and now_unread > unread:
            self._calm(f"{now_unread} bytes of output unread while it keeps sending")
            return
        if self._held is not None:
            self._held.arm()
        if self.busy:
            self.idle_since = None

    def eof_received(self) -> bool | None:
        if self.shut:
            return False  # asyncio closes the transport
        try:
            return self._outer.eof_received()
        except Exception as exc:
            self._failed(exc, "eof_received")
            return False

    def pause_writing(self) -> None:
        if not self.shut:
            try:
                self._outer.pause_writing()
            except Exception as exc:
                self._failed(exc, "pause_writing")

    def resume_writing(self) -> None:
        if not self.shut:
            try:
                self._outer.resume_writing()
            except Exception as exc:
                self._failed(exc, "resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        if self._held is not None:
            self._held.close()
        try:
            self._outer.connection_lost(exc)
        except Exception as error:
            self._guard._log_error(self, f"connection_lost raised {_describe(error)}")
        finally:
            self._guard._lost(self)

    # ------------------------------------------------------------ the guard ---

    @property
    def busy(self) -> bool:
        """Whether a stream is open (a call not yet answered, or a request held)."""
        return bool(open_streams(self._h2)) or bool(self._held)

    @property
    def held_requests(self) -> int:
        """Requests of this connection whose headers came without their body yet."""
        return len(self._held) if self._held is not None else 0

    def stop_holding_requests(self) -> None:
        """New requests are handed on at once from now on (the drain has begun)."""
        if self._held is not None:
            self._held.stop_holding()

    def answer_held_requests(self, status: Status, message: str) -> int:
        """Answer the held requests with ``status`` (see
        :meth:`~._held_requests.HeldRequests.answer_all`); how many there were."""
        if self._held is None or self.shut:
            return 0
        try:
            return self._held.answer_all(status, message)
        except Exception as exc:  # the HTTP/2 state may be closing already
            self._failed(exc, "answer_held_requests")
            return 0

    def _stream_reset(self) -> None:
        # Inside grpclib's data_received: only note it; data_received acts after.
        now = trio.current_time()
        limits = self._guard.limits
        self._reset_tokens = min(
            float(limits.reset_burst),
            self._reset_tokens + (now - self._reset_at) * limits.reset_rate,
        )
        self._reset_at = now
        self._reset_tokens -= 1
        if self._reset_tokens < 0 and self._calm_reason is None:
            self._calm_reason = (
                f"more than {limits.reset_burst} stream resets at "
                f"over {limits.reset_rate:g}/s (rapid reset)"
            )

    def _calm(self, why: str) -> None:
        self._guard.counts.calm_closed += 1
        self._guard._log_calm(self, why)
        self.close(ErrorCodes.ENHANCE_YOUR_CALM)

    def _failed(self, exc: Exception, where: str) -> None:
        self._guard.counts.error_closed += 1
        self._guard._log_error(self, f"{where} raised {_describe(exc)}")
        logger.debug("connection from %s: %s raised", self.peer, where, exc_info=exc)
        code = ErrorCodes.PROTOCOL_ERROR if _is_protocol_error(exc) else ErrorCodes.INTERNAL_ERROR
        self.close(code)

    def close(self, error_code: ErrorCodes) -> None:
        """GOAWAY with ``error_code`` (if the HTTP/2 state allows), stop reading, FIN,
        and abort :data:`LINGER_S` later unless the client has closed by then."""
        if self.shut:
            return
        self.shut = True
        if self._held is not None:
            self._held.close()  # nothing more is read: their bodies cannot come
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        try:
            _http2.send_goaway(self._h2, error_code)
        except Exception as exc:  # the state that raised before may raise again
            logger.debug("no GOAWAY to %s: %r", self.peer, exc)
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                transport.abort()
                return
        else:
            transport.close()  # TLS: close_notify after what is buffered
        asyncio.get_running_loop().call_later(LINGER_S, _abort_unless_closed, transport)


def _write_buffer_size(transport: asyncio.BaseTransport | None) -> int:
    if isinstance(transport, asyncio.WriteTransport):
        return transport.get_write_buffer_size()
    return 0


def _abort_unless_closed(transport: asyncio.WriteTransport) -> None:
    # After write_eof() the transport stays open until the client's FIN; after
    # close() until the buffer is flushed. A client that does neither loses it now.
    transport.abort()


class ConnectionGuard:
    """Admits, watches and closes the host's connections (see the module docstring).

    Lives on the asyncio side of the one thread: every method runs in an asyncio
    callback or in a Trio task of the same thread. :meth:`start` begins the idle
    sweep (an asyncio timer); :meth:`stop` ends it.
    """

    def __init__(self, limits: EdgeLimits, *, request_timeout_s: float) -> None:
        self.limits = limits
        #: How long a connection holds a request whose body has not begun
        #: (:class:`~._held_requests.HeldRequests`).
        self.request_timeout_s = request_timeout_s
        self.counts = EdgeCounts()
        self._connections: set[GuardedConnection] = set()
        self._refused_log = LogThrottle(LOG_INTERVAL_S)
        self._calm_log = LogThrottle(LOG_INTERVAL_S)
        self._error_log = LogThrottle(LOG_INTERVAL_S)
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_every = min(1.0, limits.idle_timeout_s / 4)

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet lost (closing ones included: they hold a
        descriptor)."""
        return len(self._connections)

    @property
    def held_requests(self) -> int:
        """Requests whose headers came without their body yet, on every connection."""
        return sum(connection.held_requests for connection in self._connections)

    def stop_holding_requests(self) -> None:
        """The drain has begun: requests held already go on waiting for their body (as
        calls in flight); new ones are handed on at once, and refused."""
        for connection in self._connections:
            connection.stop_holding_requests()

    def answer_held_requests(self, status: Status, message: str) -> int:
        """The drain's grace period is over: answer every held request with ``status``
        and ``message`` and reset its stream; how many there were."""
        return sum(
            connection.answer_held_requests(status, message)
            for connection in list(self._connections)
        )

    def wrap(self, h2: asyncio.Protocol, outer: asyncio.Protocol) -> GuardedConnection:
        """The protocol to give asyncio for a connection whose stack is ``outer`` with
        grpclib's ``h2`` at the bottom."""
        return GuardedConnection(outer, h2, self)

    def start(self) -> None:
        """Begin sweeping idle connections (no-op with an infinite idle timeout)."""
        if self._sweep is None and math.isfinite(self.limits.idle_timeout_s):
            self._sweep = asyncio.get_running_loop().call_later(self._sweep_every, self._tick)

    def stop(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _tick(self) -> None:
        self._sweep = asyncio.get_running_loop().call_later(self._sweep_every, self._tick)
        self.close_idle()

    def close_idle(self) -> int:
        """Close every connection idle for the timeout; how many it closed.

        Idleness is measured from when a sweep (or input) last saw a stream open, so
        a connection closes between one timeout and one sweep interval after its last
        stream ended, never earlier.
        """
        now = trio.current_time()
        closed = 0
        for connection in list(self._connections):
            if connection.shut:
                continue
            if connection.busy:
                connection.idle_since = None
            elif connection.idle_since is None:
                connection.idle_since = now
            elif now - connection.idle_since >= self.limits.idle_timeout_s:
                logger.debug(
                    "closing %s: idle for %.1f s", connection.peer, now - connection.idle_since
                )
                connection.close(ErrorCodes.NO_ERROR)
                closed += 1
        self.counts.idle_closed += closed
        return closed

    # ------------------------------------------------------- from connections ---

    def _admit(self, connection: GuardedConnection) -> bool:
        if len(self._connections) >= self.limits.max_connections:
            self.counts.refused += 1
            held = self._refused_log.ready()
            if held is not None:
                logger.warning(
                    "connection from %s refused: %d connections open (max_connections)%s",
                    connection.peer,
                    len(self._connections),
                    LogThrottle.suffix(held),
                )
            return False
        self._connections.add(connection)
        return True

    def _lost(self, connection: GuardedConnection) -> None:
        self._connections.discard(connection)

    def _log_calm(self, connection: GuardedConnection, why: str) -> None:
        held = self._calm_log.ready()
        if held is not None:
            logger.warning(
                "closing connection from %s with GOAWAY ENHANCE_YOUR_CALM: %s%s",
                connection.peer,
                why,
                LogThrottle.suffix(held),
            )

    def _log_error(self, connection: GuardedConnection, what: str) -> None:
        held = self._error_log.ready()
        if held is not None:
            logger.warning(
                "closing connection from %s: %s%s",
                connection.peer,
                what,
                LogThrottle.suffix(held),
            )


def _describe(exc: BaseException) -> str:
    text = repr(exc)
    return text if len(text) <= 200 else text[:200] + "…"
