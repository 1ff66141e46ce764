"""What a :class:`~guardrefresh.server.GrpcHost` uses when it is not told otherwise.

The limits an operator can set are the ``[server]`` settings' defaults, declared once in
:class:`~guardrefresh.config.ServerConfig`, so that a host built directly (tests,
benchmarks) gets what the service gets; the rest are fixed here.
"""

from __future__ import annotations

from typing import Final

from ..config import ServerConfig

__all__ = [
    "CLOSED_STREAMS_REMEMBERED",
    "MAX_CONCURRENT_STREAMS",
    "MAX_MESSAGE_BYTES",
    "MAX_PENDING_REQUEST_BYTES",
    "REQUEST_TIMEOUT_S",
    "SHED_FORGIVE_S",
    "SHED_PAUSE_S",
    "SHED_STREAMS",
]

#: Closed HTTP/2 streams each connection remembers (see _http2.remember_closed_streams):
#: ten times the 100 streams a client may have open at once (h2's default
#: MAX_CONCURRENT_STREAMS), so that any frame still in flight when its stream closed
#: meets a remembered stream; about 0.2 MB per connection instead of h2's 12-15 MB.
CLOSED_STREAMS_REMEMBERED = 1000

_SERVER_SETTINGS: Final = ServerConfig()
#: Largest request message accepted, in bytes.
MAX_MESSAGE_BYTES: Final = _SERVER_SETTINGS.max_message_bytes
#: HTTP/2 streams a client may have open at once on one connection (SETTINGS).
MAX_CONCURRENT_STREAMS: Final = _SERVER_SETTINGS.max_concurrent_streams
#: Bytes of request bodies being received or waiting for a run slot, process-wide.
MAX_PENDING_REQUEST_BYTES: Final = _SERVER_SETTINGS.max_pending_request_bytes
#: Seconds a call's request message may take to arrive.
REQUEST_TIMEOUT_S: Final = _SERVER_SETTINGS.request_timeout
#: Seconds a connection is not read after one of its calls was shed (see _intake).
SHED_PAUSE_S = 4.0
#: Streams a connection may have open at once after one of its calls was shed: as
#: many as a client sending one call at a time (see _intake.ShedBackoff) ...
SHED_STREAMS = 1
#: ... until it has gone this many seconds without a shed.
SHED_FORGIVE_S = 30.0
