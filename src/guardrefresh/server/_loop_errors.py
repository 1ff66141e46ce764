"""What the asyncio loop does with an error nobody caught: log it, contain it, go on.

asyncio hands errors that have nowhere else to go (a protocol callback that raised, an
``accept()`` that failed, a callback of a timer) to the loop's exception handler. Plain
asyncio's default handler logs them and the loop carries on; grpclib is written for that.
trio-asyncio's default handler logs them and then *re-raises* them into the nursery that
runs the loop, which here is the service's root: one malformed HTTP/2 frame (grpclib
raising inside ``data_received``) or one ``accept()`` failing with EMFILE ended the whole
process. :func:`contain_loop_errors` installs a handler that keeps asyncio's semantics:

- ``socket.accept() out of system resource`` (EMFILE, ENFILE, ENOBUFS, ENOMEM): asyncio
  has already stopped accepting on that socket and retries in one second; the handler
  logs one WARNING line per :data:`ACCEPT_ERROR_LOG_INTERVAL_S` with the count.
- An error with a ``transport`` (a connection's callback failed): that connection is
  closed (aborted) and one WARNING line names its peer. Other connections go on.
- Anything else: one ERROR record with the traceback, as asyncio's own handler logs it.

Connections served by :class:`~guardrefresh.server.GrpcHost` contain their own errors
before they ever reach the loop (see ``_connections``); this is the net under that.

:func:`guard_accept_retry` mends two things of asyncio's accept loop:

- The retry that follows an accept error: asyncio schedules ``loop._start_serving(...)``
  for one second later without checking that the listening socket is still open, and a
  drain that closes it within that second made the retry register descriptor -1
  (``ValueError: Invalid file descriptor: -1``). The retry is skipped then.
- The burst: each time the listening socket is readable, asyncio accepts up to
  ``backlog`` (grpclib: 100) connections before any of them reaches its protocol, so a
  connection cap checked when a connection is made could be overrun by 100 descriptors
  at once, more than the reserve kept for storage and metrics
  (``_connections.FD_RESERVE``). At most :data:`ACCEPTS_PER_WAKEUP` are accepted per
  turn instead; the listen queue keeps its length, and the rest are accepted on the
  loop's next turns.

It reaches one private method of asyncio's selector loop (``_start_serving``, the same
in Python 3.11 to 3.13; its ``backlog`` only bounds the accepts per turn, ``listen()``
was called before) through ``_dependency_internals``, checked at start-up.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any

from . import _dependency_internals as internals
from ._throttle import LogThrottle

__all__ = [
    "ACCEPTS_PER_WAKEUP",
    "ACCEPT_ERROR_LOG_INTERVAL_S",
    "LoopErrorHandler",
    "contain_loop_errors",
    "guard_accept_retry",
]

logger = logging.getLogger(__name__)

#: At most one WARNING per this many seconds for failed accepts and failed connections.
ACCEPT_ERROR_LOG_INTERVAL_S = 10.0
#: Connections accepted per turn of the loop (asyncio: the listen backlog, 100).
ACCEPTS_PER_WAKEUP = 16

_ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"


class LoopErrorHandler:
    """The exception handler; counts what it saw, by kind."""

    def __init__(self) -> None:
        self.accept_errors = 0
        self.connection_errors = 0
        self.other_errors = 0
        self._accept_log = LogThrottle(ACCEPT_ERROR_LOG_INTERVAL_S)
        self._connection_log = LogThrottle(ACCEPT_ERROR_LOG_INTERVAL_S)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled error in the asyncio loop")
        exc = context.get("exception")
        if message.startswith(_ACCEPT_OUT_OF_RESOURCES):
            self.accept_errors += 1
            held = self._accept_log.ready()
            if held is not None:
                logger.warning(
                    "accept() failed: %s; new connections wait in the backlog, retrying in 1 s%s",
                    exc,
                    LogThrottle.suffix(held),
                )
            return
        transport = context.get("transport")
        if isinstance(transport, asyncio.BaseTransport):
            self.connection_errors += 1
            if not transport.is_closing() and isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            held = self._connection_log.ready()
            if held is not None:
                logger.warning(
                    "connection from %s failed (%s: %r); closed it%s",
                    _peer(transport),
                    message,
                    exc,
                    LogThrottle.suffix(held),
                )
            return
        self.other_errors += 1
        exc_info = (type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None
        logger.error("asyncio: %s", message, exc_info=exc_info)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return repr(peer)


def contain_loop_errors(loop: asyncio.AbstractEventLoop) -> LoopErrorHandler:
    """Install a containing :class:`LoopErrorHandler` on ``loop`` (replacing
    trio-asyncio's) and return it."""
    handler = LoopErrorHandler()
    loop.set_exception_handler(handler)
    return handler


def guard_accept_retry(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` skip an accept retry whose listening socket has closed meanwhile,
    and accept at most :data:`ACCEPTS_PER_WAKEUP` connections per turn."""

    def guarded(start_serving: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(start_serving)  # keeps its signature for the start-up check
        def start_serving_if_open(*args: Any, **kwargs: Any) -> None:
            bound = signature.bind(*args, **kwargs)
            sock: socket.socket = bound.arguments["sock"]
            if sock.fileno() < 0:
                logger.debug("accept retry skipped: the listening socket was closed meanwhile")
                return
            backlog = bound.arguments.get("backlog", ACCEPTS_PER_WAKEUP)
            bound.arguments["backlog"] = min(backlog, ACCEPTS_PER_WAKEUP)
            start_serving(*bound.args, **bound.kwargs)

        return start_serving_if_open

    signature = internals.wrap_start_serving(loop, guarded)
