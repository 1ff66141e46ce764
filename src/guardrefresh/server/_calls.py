"""The host's view of every call: counted in flight, rejected while draining, reported.

Every method's handler is wrapped once, when the server is built (:meth:`Calls.serve`);
the wrapper sees every call before the handler. It answers new calls with UNAVAILABLE
while draining, runs the authorisation check, registers the call with its asyncio task
and grpclib stream, and reads its request under the host's limits (``_intake``). (A
``RecvRequest`` listener could do the same per call, at the cost of an event object and
a closure for every call.)

In-flight counting keys on the request's asyncio *task*: the call leaves the count from
the task's done-callback, i.e. after grpclib has sent its trailers and released the
stream, never merely when the handler function returned. So a drain that sees zero in
flight can close connections without cutting off a response on the wire. A forced end
(:meth:`Calls.cancel_all`) cancels each remaining task after marking it; the wrapper turns
that cancellation into ``GRPCError(UNAVAILABLE)``, which grpclib itself sends as trailers:
a client always gets a status, never a hang until its own deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NoReturn

import attrs
import grpclib.const
import grpclib.events
import grpclib.server
import trio
import trio_util
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from . import _dependency_internals as internals
from ._call_endings import require_request_message
from ._held_requests import headers_arrived_at
from ._intake import RequestLimits, RequestReader
from ._wakeup import Wakeup

__all__ = ["DEFAULT_EXEMPT_METHODS", "SHUTDOWN_MESSAGE", "Calls"]

logger = logging.getLogger(__name__)

#: grpc-message of every UNAVAILABLE the drain sends.
SHUTDOWN_MESSAGE = "server is shutting down"

#: Health and reflection methods: never counted as in flight, never rejected.
DEFAULT_EXEMPT_METHODS: frozenset[str] = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
)

_HEALTH_WATCH = "/grpc.health.v1.Health/Watch"

OnCallDone = Callable[[str, Status, float], None]
Authorize = Callable[[str, Mapping[str, Any]], None]


@attrs.define(eq=False)
class _Outcome:
    """What ``on_call_done`` is told about one RPC; its status is the trailers sent."""

    method: str
    started: float
    #: The status grpclib was about to send (SendTrailingMetadata fires before the write).
    status: Status | None = None
    #: Set once the handler runs; tells whether the trailers really went out.
    stream: grpclib.server.Stream[Any, Any] | None = None


@attrs.define(eq=False)
class _Call:
    task: asyncio.Task[Any]
    stream: grpclib.server.Stream[Any, Any]
    method: str
    exempt: bool
    reader: RequestReader
    forced: bool = False


class Calls:
    """The calls of one host (see the module docstring); lives on the asyncio side.

    ``exempt`` methods are neither counted in flight nor rejected; ``on_call_done`` and
    ``authorize`` are :class:`~guardrefresh.server.GrpcHost`'s. ``wakeup`` is set
    whenever a call ends.
    """

    def __init__(
        self,
        limits: RequestLimits,
        wakeup: Wakeup,
        *,
        exempt: Collection[str],
        on_call_done: OnCallDone | None,
        authorize: Authorize | None,
    ) -> None:
        self.exempt = frozenset(exempt)
        #: Set by the host when its drain begins: new calls get UNAVAILABLE from then on.
        self.draining = False
        #: When the drain began (Trio clock); a call whose headers came before is not
        #: new, even if it starts later (its request was held, ``_held_requests``).
        self.drain_began_at = 0.0
        #: New calls answered UNAVAILABLE during the drain.
        self.rejected = 0
        #: Calls whose task has ended since the host was made (only grows).
        self.ended: trio_util.AsyncValue[int] = trio_util.AsyncValue(0)
        self._limits = limits
        self._wakeup = wakeup
        self._on_call_done = on_call_done
        self._authorize = authorize
        self._calls: set[_Call] = set()
        self._outcomes: dict[asyncio.Task[Any], _Outcome] = {}

    @property
    def in_flight(self) -> int:
        """Calls running now, health and reflection streams excluded."""
        return sum(1 for call in self._calls if not call.exempt)

    @property
    def open(self) -> int:
        """Calls whose handler task is running now, exempt ones included."""
        return len(self._calls)

    def compact(self) -> None:
        """Rebuild the per-call containers: after a burst their tables keep the size they
        grew to (a dict or set never shrinks on deletion), pinning memory."""
        self._calls = set(self._calls)
        self._outcomes = dict(self._outcomes)

    def serve(self, servables: Sequence[object]) -> list[object]:
        """The servables to give grpclib: each method's handler wrapped (once, here) so
        that every call goes through the host (see the module docstring)."""
        return [_Wrapped(servable, self._wrap_handler) for servable in servables]

    def listen(self, server: grpclib.server.Server) -> None:
        """Register the listener that learns each call's status (before it starts)."""
        if self._on_call_done is not None:
            grpclib.events.listen(
                server, grpclib.events.SendTrailingMetadata, self._on_send_trailing_metadata
            )

    def cancel_all(self) -> tuple[int, int]:
        """The forced end: cancel every running call; its client gets UNAVAILABLE.

        Health Watch streams are left to end by themselves after their final status.
        Returns (calls cancelled before their status went out, exempt streams ended).
        """
        cancelled = 0
        exempt_ended = 0
        for call in list(self._calls):
            if call.exempt:
                exempt_ended += 1
                if call.method == _HEALTH_WATCH:
                    continue
            elif not internals.trailers_sent(call.stream):
                cancelled += 1
            call.forced = True
            call.task.cancel()
        return cancelled, exempt_ended

    def _wrap_handler(
        self,
        func: Callable[[grpclib.server.Stream[Any, Any]], Any],
        method: str,
    ) -> Callable[[grpclib.server.Stream[Any, Any]], Any]:
        exempt = method in self.exempt

        async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
            # In the call's task, once grpclib has read the headers (stream.metadata).
            task = asyncio.current_task()
            assert task is not None
            headers_at = headers_arrived_at()
            outcome = (
                None
                if self._on_call_done is None
                else self._track_outcome(method, task, headers_at)
            )
            try:
                if self.draining and not exempt and self._new_since_drain(headers_at):
                    self._reject(method)
                if self._authorize is not None:
                    self._authorize(method, stream.metadata)
            except BaseException:
                if outcome is not None:
                    task.add_done_callback(functools.partial(self._report_outcome, outcome))
                raise
            reader = RequestReader(
                self._limits,
                connection=internals.call_transport(stream),
                admit=not exempt,
                headers_at=headers_at,
            )
            call = _Call(task=task, stream=stream, method=method, exempt=exempt, reader=reader)
            if outcome is not None:
                outcome.stream = stream
            self._calls.add(call)
            # One callback for both: each is a pass of the loop for every call.
            task.add_done_callback(functools.partial(self._call_done, call, outcome))
            internals.intercept_request_reads(stream, reader.read)
            require_request_message(stream)
            try:
                await func(stream)
            except asyncio.CancelledError:
                if not call.forced:
                    raise  # client reset, lost connection, deadline: grpclib's business
                task.uncancel()
                # grpclib sends a GRPCError leaving the handler as the call's trailers.
                raise GRPCError(Status.UNAVAILABLE, SHUTDOWN_MESSAGE) from None

        return handle

    def _track_outcome(
        self, method: str, task: asyncio.Task[Any], headers_at: float | None
    ) -> _Outcome:
        outcome = _Outcome(
            method=method, started=trio.current_time() if headers_at is None else headers_at
        )
        self._outcomes[task] = outcome
        return outcome

    async def _on_send_trailing_metadata(self, event: grpclib.events.SendTrailingMetadata) -> None:
        # grpclib sends a call's trailers from the call's own task.
        task = asyncio.current_task()
        outcome = self._outcomes.get(task) if task is not None else None
        if outcome is not None and outcome.status is None:
            outcome.status = event.status

    def _report_outcome(self, outcome: _Outcome, task: asyncio.Task[Any]) -> None:
        self._outcomes.pop(task, None)
        assert self._on_call_done is not None
        status = outcome.status
        if outcome.stream is not None and not internals.trailers_sent(outcome.stream):
            # grpclib tried (UNKNOWN, after the reset) but the client had gone:
            # from its side the call was cancelled.
            status = None
        if status is None:
            status = Status.CANCELLED
        try:
            self._on_call_done(outcome.method, status, trio.current_time() - outcome.started)
        except Exception:
            logger.exception("on_call_done(%r, %s) failed", outcome.method, status.name)

    def _new_since_drain(self, headers_at: float | None) -> bool:
        # The call's headers came after the drain began (None: just now).
        return headers_at is None or headers_at >= self.drain_began_at

    def _reject(self, method: str) -> NoReturn:
        self.rejected += 1
        logger.debug("rejected %s: draining", method)
        raise GRPCError(Status.UNAVAILABLE, SHUTDOWN_MESSAGE)

    def _call_done(self, call: _Call, outcome: _Outcome | None, task: asyncio.Task[Any]) -> None:
        # Runs after grpclib sent the trailers and released the stream.
        if outcome is not None:
            self._report_outcome(outcome, task)
        call.reader.finish()
        self._calls.discard(call)
        self.ended.value += 1
        self._wakeup.set()


class _Wrapped:
    """A grpclib servable whose method handlers go through ``wrap(func, method)``."""

    def __init__(
        self,
        servable: object,
        wrap: Callable[[Callable[[grpclib.server.Stream[Any, Any]], Any], str], Any],
    ) -> None:
        self._servable = servable
        self._wrap = wrap

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = self._servable.__mapping__()  # type: ignore[attr-defined]
        return {
            method: handler._replace(func=self._wrap(handler.func, method))
            for method, handler in mapping.items()
        }
