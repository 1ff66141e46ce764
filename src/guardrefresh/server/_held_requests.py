"""Requests whose headers came without any of their body wait as headers, not as calls.

grpclib starts a call as soon as a request's headers arrive: a stream with two queues
and their events, a task, the host's bookkeeping of the call, about 17 KB of small
objects. A client that sends headers and nothing more holds all of that until the
request timeout; 4,000 such streams held 70 MB, and since the objects of thousands of
calls end up spread over the heap, with the few that outlive the calls among them,
much of that stayed resident after the calls ended (Python's allocator gives an arena
back to the OS only once every object in it is gone).

So on each connection a request's headers wait in a :class:`HeldRequests`, as the h2
event only (the stream's state is h2's, which it keeps anyway), until the stream's first
DATA frame, its trailers or its end; then grpclib gets the headers and that frame, in
order. A well-behaved client sends its headers and its message together, so its calls
start exactly as before, within the same read.

A request still held ``timeout_s`` after its headers is handed to grpclib then, and
ends with DEADLINE_EXCEEDED the usual way: the call's receive deadline counts from
:func:`headers_arrived_at`, which has passed. A stream the client resets is forgotten.
For the drain a held request is in flight: its headers came before the drain began,
so its call is not refused as new when its body comes; one whose body has not come
by the end of the grace period is answered UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from grpclib.const import Status
from grpclib.metadata import encode_grpc_message
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset, TrailersReceived

from . import _dependency_internals as internals

__all__ = ["HeldRequests", "headers_arrived_at"]

#: A held request is handed on once this close to its timeout: timers may fire a
#: little early, and the call's own deadline covers the rest.
_SLACK_S = 0.001

_headers_at: ContextVar[float | None] = ContextVar("guardrefresh_headers_at", default=None)


def headers_arrived_at() -> float | None:
    """When the current call's headers arrived (loop time), if its request was held.

    grpclib creates a call's task while :class:`HeldRequests` hands the request on,
    and the task keeps the context it was created in. None for a request that came
    whole with its headers (it started at once) and outside a call's task.
    """
    return _headers_at.get()


class HeldRequests:
    """The held requests of one connection; installed on grpclib's ``H2Protocol``
    ``protocol`` (after its ``connection_made()``) by the constructor.

    The owner calls :meth:`arm` after each ``data_received`` (so that only requests
    still held after a read cost a timer) and :meth:`close` when the connection is lost.
    The drain calls :meth:`stop_holding` when it begins (requests that came before go
    on waiting for their body, as calls in flight would; new ones are not held, and
    are refused at once) and :meth:`answer_all` when its grace period is over.
    """

    def __init__(self, protocol: asyncio.Protocol, *, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._timeout_s = timeout_s
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        #: stream id -> (its headers, when they arrived); in order of arrival.
        self._held: dict[int, tuple[RequestReceived, float]] = {}
        self._holding = True
        self._timer: asyncio.TimerHandle | None = None

        handlers = internals.event_handlers(protocol)
        self._accept = handlers[RequestReceived]
        handlers[RequestReceived] = self._on_request
        for event_class in (DataReceived, TrailersReceived, StreamEnded):
            handlers[event_class] = self._releasing(handlers[event_class])
        handlers[StreamReset] = self._forgetting(handlers[StreamReset])

    def __len__(self) -> int:
        return len(self._held)

    def arm(self) -> None:
        """Make sure a timer will hand on the oldest held request at its timeout."""
        if self._held and self._timer is None:
            _event, arrived = next(iter(self._held.values()))
            self._timer = self._loop.call_at(arrived + self._timeout_s, self._expire)

    def stop_holding(self) -> None:
        """Hand new requests to grpclib at once from now on; those held stay held."""
        self._holding = False

    def answer_all(self, status: Status, message: str) -> int:
        """Answer every held request with ``status`` and ``message`` (a trailers-only
        response) and reset its stream, whose body will not be read (NO_ERROR); how
        many there were."""
        answered = len(self._held)
        if answered:
            connection = internals.h2_connection(self._protocol)
            trailers = [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", str(status.value)),
                ("grpc-message", encode_grpc_message(message)),
            ]
            for stream_id in self._held:
                connection.send_headers(stream_id, trailers, end_stream=True)
                connection.reset_stream(stream_id, ErrorCodes.NO_ERROR)
            self._held.clear()
            internals.flush(self._protocol)
        return answered

    def close(self) -> None:
        """The connection is lost: forget its held requests (grpclib never saw them)."""
        self._holding = False
        self._held.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ----------------------------------------------------------- h2 events ---

    def _on_request(self, event: RequestReceived) -> None:
        if self._holding and event.stream_ended is None and event.stream_id is not None:
            self._held[event.stream_id] = (event, self._loop.time())
        else:
            self._accept(event)

    def _releasing(self, handle: Callable[[Any], None]) -> Callable[[Any], None]:
        def release_then_handle(event: Any) -> None:
            if event.stream_id in self._held:
                self._release(event.stream_id)
            handle(event)

        return release_then_handle

    def _forgetting(self, handle: Callable[[StreamReset], None]) -> Callable[[StreamReset], None]:
        def forget_then_handle(event: StreamReset) -> None:
            self._held.pop(event.stream_id, None)
            handle(event)

        return forget_then_handle

    # ------------------------------------------------------------- helpers ---

    def _release(self, stream_id: int) -> None:
        event, arrived = self._held.pop(stream_id)
        token = _headers_at.set(arrived)
        try:
            self._accept(event)
        finally:
            _headers_at.reset(token)

    def _expire(self) -> None:
        self._timer = None
        due = self._loop.time() + _SLACK_S - self._timeout_s
        try:
            while self._held:
                stream_id, (_event, arrived) = next(iter(self._held.items()))
                if arrived > due:
                    break
                self._release(stream_id)
        finally:
            self.arm()
