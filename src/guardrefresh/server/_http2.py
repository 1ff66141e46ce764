"""What the host changes in each HTTP/2 connection grpclib makes, and what it reads there.

grpclib answers an HTTP/2 frame type it has no handler for with ``NotImplementedError``
(RFC 9113 section 5.5 says unknown types MUST be ignored), offers no hook to see stream
resets (rapid reset, CVE-2023-44487) and none to send GOAWAY, logs an ERROR traceback for
every request whose headers lack ``:method`` or ``:path``, and advertises h2's default
stream limit. h2 buffers a frame whole before it checks its length against
SETTINGS_MAX_FRAME_SIZE (up to 16 MiB for one announced frame), and remembers the last
2**16 closed streams of each connection (12-15 MB per long-lived connection).

The functions here mend that for one connection at a time; ``protocol`` is always the
connection's grpclib ``H2Protocol`` after its ``connection_made()``. They reach grpclib
only through ``_dependency_internals``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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

from . import _dependency_internals as internals

__all__ = [
    "advertise_max_concurrent_streams",
    "ignore_unknown_frames",
    "observe_stream_resets",
    "oversized_frame_pending",
    "refuse_malformed_requests",
    "remember_closed_streams",
    "send_goaway",
]

#: Pseudo-headers without which grpclib's request handler fails with a KeyError, each a
#: bit (h2 gives names as str or bytes, as configured).
_REQUIRED_PSEUDO_HEADERS: dict[str | bytes, int] = {
    ":method": 1,
    ":path": 2,
    b":method": 1,
    b":path": 2,
}
_ALL_REQUIRED = 3


def remember_closed_streams(count: int) -> None:
    """Make every HTTP/2 connection made from now on in this process remember only its
    ``count`` latest closed streams.

    h2 remembers how each closed stream ended, so that a frame the peer sent before it
    learnt of the close is handled gracefully; a frame for a stream it has forgotten
    gets RST_STREAM or ends the connection, as for any stream it never knew. h2 keeps
    2**16 per connection, about 12-15 MB per long-lived connection once that many calls
    have gone through it (the soak saw memory climb by 2 MB a minute for that alone);
    nghttp2 keeps as many as streams may be open at once. h2's public class attribute
    ``H2Connection.MAX_CLOSED_STREAMS`` sets the bound, read as each connection is made:
    process-wide, for grpclib's connections and any other h2 connection.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    H2Connection.MAX_CLOSED_STREAMS = count


def advertise_max_concurrent_streams(protocol: asyncio.Protocol, limit: int) -> None:
    """Tell the client of a new connection how many streams it may have open at once.

    ``connection_made()`` has sent h2's initial SETTINGS, with h2's default of 100. A
    different ``limit`` goes out in a second SETTINGS frame at once; h2 enforces it once
    the client acknowledges it (RFC 9113 section 6.5.3: a conforming client does so at
    once), and until then the 100 of the first frame. A client that opens more streams
    than it was allowed breaks the protocol: h2 raises, and grpclib closes that connection.
    """
    connection = internals.h2_connection(protocol)
    if connection.local_settings.max_concurrent_streams == limit:
        return
    connection.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
    internals.flush(protocol)


def _ignore(_event: object) -> None:
    pass


def ignore_unknown_frames(protocol: asyncio.Protocol) -> None:
    """Make one connection ignore frames of unknown types, and ALTSVC frames.

    h2 reports an extension frame as ``UnknownFrameReceived`` (and an ALTSVC frame a
    client has no business sending as ``AlternativeServiceAvailable``); grpclib has no
    handler for either and would raise ``NotImplementedError`` from ``data_received``.
    """
    handlers = internals.event_handlers(protocol)
    handlers[UnknownFrameReceived] = _ignore
    handlers[AlternativeServiceAvailable] = _ignore


def observe_stream_resets(protocol: asyncio.Protocol, observe: Callable[[], None]) -> None:
    """Call ``observe()`` for every RST_STREAM the client sends on this connection.

    ``observe`` runs after grpclib handled the reset (cancelled the call), inside
    ``data_received``; it must not raise.
    """
    handlers = internals.event_handlers(protocol)
    handle = handlers[StreamReset]

    def process_stream_reset(event: StreamReset) -> None:
        handle(event)
        if event.remote_reset:
            observe()

    handlers[StreamReset] = process_stream_reset


def send_goaway(protocol: asyncio.Protocol, error_code: ErrorCodes) -> bool:
    """Write a GOAWAY frame with ``error_code`` on one connection; whether it could.

    The last stream id is the highest the client opened, so the client knows that
    nothing it sent later was processed. Writing does not close the transport: the
    caller does that. False when the HTTP/2 state refuses (already closed) or the
    connection was never set up.
    """
    if getattr(protocol, "connection", None) is None:
        return False
    try:
        internals.h2_connection(protocol).close_connection(error_code=error_code)
        internals.flush(protocol)
    except (ProtocolError, RuntimeError):
        return False
    return True


def oversized_frame_pending(protocol: asyncio.Protocol) -> bool:
    """Whether the frame the client is in the middle of sending is over the size we allow.

    h2 checks a frame's length against our SETTINGS_MAX_FRAME_SIZE only once all of it
    has arrived, so until then it buffers up to the 16 MiB a frame header can announce.
    This reads the header of the incomplete frame waiting in h2's buffer instead.
    """
    connection = internals.h2_connection(protocol)
    pending = internals.unparsed_input(connection)
    if len(pending) < 3:
        return False
    return int.from_bytes(pending[:3], "big") > connection.max_inbound_frame_size


def refuse_malformed_requests(protocol: asyncio.Protocol) -> None:
    """Reset, with PROTOCOL_ERROR, request streams whose headers lack ``:method`` or
    ``:path``, before grpclib sees them.

    RFC 9113 section 8.1.1: a malformed request is a stream error of type
    PROTOCOL_ERROR. grpclib would look the headers up unguarded and log "Server error"
    with a traceback for each such request.
    """
    handlers = internals.event_handlers(protocol)
    handle = handlers[RequestReceived]

    def process_request_received(event: RequestReceived) -> None:
        found = 0
        for name, _value in event.headers or ():
            found |= _REQUIRED_PSEUDO_HEADERS.get(name, 0)
            if found == _ALL_REQUIRED:
                handle(event)
                return
        assert event.stream_id is not None
        internals.h2_connection(protocol).reset_stream(event.stream_id, ErrorCodes.PROTOCOL_ERROR)
        internals.flush(protocol)

    handlers[RequestReceived] = process_request_received
