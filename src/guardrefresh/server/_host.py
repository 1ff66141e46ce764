"""A grpclib server hosted inside Trio (through trio-asyncio) with a real graceful drain.

grpclib alone cannot shut down gracefully: ``Server.close()`` cancels running handlers
without telling their clients, and open connections keep accepting new calls. The host
adds what is missing, on the asyncio side of the one thread both loops share: it sees
every call before its handler and counts it until its status is on the wire (``_calls``),
tracks every connection so that it can close it at the end (``_host_connections``),
guards each connection against hostile clients (``_connections``), bounds what a call
may cost before its handler runs (``_intake``, ``_admission``), and ends the health
Watch streams cleanly (``_health``).

Health (``grpc.health.v1.Health``) and reflection streams are exempt from counting and
rejection: probes keep working during the drain and report NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any

import grpclib.events
import grpclib.server
import trio
import trio_asyncio
import trio_util
from grpclib.const import Status
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection

from guardrefresh.proto.google_proto_descriptor_pool import default_google_proto_descriptor_pool

from . import _dependency_internals as internals
from . import _http2
from ._admission import Admission, default_max_queued, default_max_running
from ._budget import ByteBudget
from ._call_endings import answer_expired_deadlines
from ._calls import DEFAULT_EXEMPT_METHODS, SHUTDOWN_MESSAGE, Calls
from ._codec import CompiledProtoCodec
from ._connections import ConnectionGuard
from ._drain_report import DrainReport
from ._edge_limits import EdgeCounts, EdgeLimits
from ._health import DrainAwareHealth, service_name
from ._host_connections import OpenConnections
from ._host_limits import (
    CLOSED_STREAMS_REMEMBERED,
    MAX_CONCURRENT_STREAMS,
    MAX_MESSAGE_BYTES,
    MAX_PENDING_REQUEST_BYTES,
    REQUEST_TIMEOUT_S,
    SHED_FORGIVE_S,
    SHED_PAUSE_S,
    SHED_STREAMS,
)
from ._intake import RequestLimits, ShedBackoff
from ._loop import drop_cancelled_timers
from ._shutdown import Drain, close_listener, requests_in_flight
from ._wakeup import Wakeup

__all__ = ["DEFAULT_EXEMPT_METHODS", "SHUTDOWN_MESSAGE", "DrainReport", "GrpcHost"]

logger = logging.getLogger(__name__)


def _listening_port(server: grpclib.server.Server) -> int:
    """The port of the first listening socket of a started server."""
    listener = internals.listener(server)
    if listener is None or not listener.sockets:
        raise RuntimeError("grpclib server has no listening socket")
    port: int = listener.sockets[0].getsockname()[1]
    return port


class GrpcHost:
    """Serve grpclib services inside Trio and drain them gracefully.

    ``services`` are grpclib servables (e.g. subclasses of a generated
    ``...Base``). The host adds ``grpc.health.v1.Health`` (see :attr:`health`;
    every service and the overall server ``""`` share one status, NOT_SERVING
    until :meth:`set_serving`) and, with ``reflection=True``, server reflection
    (v1 and v1alpha) describing ``services`` from the generated descriptor pool.

    With ``ssl``, the context is set to offer ALPN ``h2`` (gRPC clients require it).
    Bind to a literal address: with a name that resolves to several, ``port=0``
    binds each on its own port and :attr:`port` reports the first.

    Request messages larger than ``max_message_bytes`` are refused with
    RESOURCE_EXHAUSTED at their length prefix, before their body is buffered.
    Responses are not limited. What a call may cost before its handler runs is
    bounded (see ``_intake``): each connection advertises ``max_concurrent_streams``;
    request bodies being received or waiting for a slot hold at most
    ``max_pending_request_bytes`` in all (beyond it: RESOURCE_EXHAUSTED); a request
    message must arrive within ``request_timeout`` seconds (else DEADLINE_EXCEEDED);
    at most ``max_concurrent_rpcs`` calls run at once and ``max_queued_rpcs`` more
    wait, shared fairly between connections (beyond it: RESOURCE_EXHAUSTED, see
    ``_admission``; None picks the defaults sized to this machine). Exempt methods
    never wait for a slot. Each connection remembers its latest
    ``closed_streams_remembered`` ended streams (h2 would keep 2**16, over 10 MB per
    long-lived connection); h2 takes that bound process-wide, so :meth:`serve` sets it
    for every HTTP/2 connection made afterwards in this process. ``exempt_methods`` (full paths) are neither counted
    in flight nor rejected while draining. ``edge_limits`` bound the connections
    (see :class:`~guardrefresh.server.EdgeLimits`; its defaults when None): an error
    while handling one connection closes that connection only.

    ``on_call_done(method, status, seconds)``, if given, is called once per RPC
    to a served method (health, reflection, rejected and cancelled ones included)
    when the call's task has ended: the full method path, the status its trailers
    carried (``Status.CANCELLED`` when none went out: the client reset the stream
    or the connection went), and the seconds since its headers arrived (Trio
    clock). It runs as an asyncio callback: keep it cheap; what it raises is
    logged and dropped. Calls to unknown methods (UNIMPLEMENTED, answered by
    grpclib before any listener) are not reported.

    A host serves once: :meth:`serve` runs it, :meth:`drain` ends it.
    """

    def __init__(
        self,
        services: Sequence[object],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        ssl: _ssl.SSLContext | None = None,
        reflection: bool = True,
        exempt_methods: Collection[str] = DEFAULT_EXEMPT_METHODS,
        on_call_done: Callable[[str, Status, float], None] | None = None,
        authorize: Callable[[str, Mapping[str, Any]], None] | None = None,
        closed_streams_remembered: int = CLOSED_STREAMS_REMEMBERED,
        edge_limits: EdgeLimits | None = None,
        max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
        max_pending_request_bytes: int = MAX_PENDING_REQUEST_BYTES,
        request_timeout: float = REQUEST_TIMEOUT_S,
        max_concurrent_rpcs: int | None = None,
        max_queued_rpcs: int | None = None,
    ) -> None:
        if not services:
            raise ValueError("GrpcHost needs at least one service")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if max_message_bytes < 5:
            # The 5-byte message prefix is read through the same size guard.
            raise ValueError(f"max_message_bytes must be >= 5, got {max_message_bytes}")
        if closed_streams_remembered < 1:
            raise ValueError(
                f"closed_streams_remembered must be >= 1, got {closed_streams_remembered}"
            )
        self._closed_streams_remembered = closed_streams_remembered
        if not 1 <= max_concurrent_streams <= 2**31 - 1:
            raise ValueError(
                f"max_concurrent_streams must be in 1..2**31-1, got {max_concurrent_streams}"
            )
        self._max_concurrent_streams = max_concurrent_streams
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0, got {request_timeout!r}")
        self._guard = ConnectionGuard(
            edge_limits if edge_limits is not None else EdgeLimits(),
            request_timeout_s=float(request_timeout),
        )
        if max_concurrent_rpcs is None:
            max_concurrent_rpcs = default_max_running()
        if max_queued_rpcs is None:
            max_queued_rpcs = default_max_queued(max_concurrent_rpcs)
        self._backoff = ShedBackoff(
            SHED_PAUSE_S,
            shed_streams=min(SHED_STREAMS, max_concurrent_streams),
            forgive_s=SHED_FORGIVE_S,
            limit_streams=self._limit_streams,
        )
        self._admission = Admission(
            max_concurrent_rpcs, max_queued_rpcs, demoted=self._backoff.is_limited
        )
        self._budget = ByteBudget(max_pending_request_bytes)
        self._limits = RequestLimits(
            max_message_bytes=max_message_bytes,
            budget=self._budget,
            request_timeout=float(request_timeout),
            admission=self._admission,
            backoff=self._backoff,
        )
        self._services = tuple(services)
        self._service_names = tuple(service_name(s) for s in self._services)
        self._host = host
        self._port = port
        self._max_message_bytes = max_message_bytes
        if ssl is not None:
            # gRPC over TLS negotiates HTTP/2 by ALPN; grpcio refuses a server without it.
            ssl.set_alpn_protocols(["h2"])
        self._ssl = ssl
        self._reflection = reflection
        self._wakeup = Wakeup()
        # ``authorize`` is called with (method, request metadata) before any handler
        # runs; it raises GRPCError (e.g. UNAUTHENTICATED) to refuse the call.
        self._calls = Calls(
            self._limits,
            self._wakeup,
            exempt=exempt_methods,
            on_call_done=on_call_done,
            authorize=authorize,
        )
        self._connections = OpenConnections(max_concurrent_streams, self._wakeup)

        self._status = ServiceStatus()
        self._status.set(False)
        self._health = DrainAwareHealth(self._services, self._status)

        self._server: grpclib.server.Server | None = None
        self._bound_port: int | None = None
        self._serve_called = False

        self._drain_grace: float | None = None
        self._drain_requested = trio.Event()
        self._drain: Drain | None = None
        self._skip = False
        self._report: DrainReport | None = None
        self._done = trio.Event()

    # ------------------------------------------------------------------ state ---

    @property
    def port(self) -> int:
        """The bound port; :exc:`RuntimeError` before :meth:`serve` reported ready."""
        if self._bound_port is None:
            raise RuntimeError("GrpcHost is not listening yet")
        return self._bound_port

    @property
    def in_flight(self) -> int:
        """RPCs in progress, health and reflection streams excluded: running, or with
        their headers in and their body not begun yet (:attr:`held_requests`)."""
        return requests_in_flight(self._calls, self._guard)

    @property
    def request_budget(self) -> ByteBudget:
        """Bytes of request bodies being received or waiting for a slot (see ``_budget``)."""
        return self._budget

    @property
    def calls_ended(self) -> trio_util.AsyncValue[int]:
        """Calls whose task has ended since the host was made (only grows)."""
        return self._calls.ended

    def _limit_streams(self, transport: Hashable, limit: int | None) -> None:
        # From ShedBackoff: SETTINGS_MAX_CONCURRENT_STREAMS of one connection, down to
        # ``limit`` after a shed, back to the usual value (None) once forgiven.
        connection = self._connections.by_transport(transport)
        if connection is None or self._calls.draining:
            return
        connection.limit_streams(self._max_concurrent_streams if limit is None else limit)

    def forget_closed_connections(self) -> None:
        """Let grpclib drop what it keeps of connections that have closed (see
        ``_dependency_internals.forget_closed_connections``); the cyclic GC then frees it.

        Also, for the trim after a burst: drops the loop's cancelled timers
        (:func:`~._loop.drop_cancelled_timers`) and rebuilds the per-call containers,
        whose tables keep the size they grew to in the burst (a dict or set never
        shrinks on deletion).
        """
        if self._server is not None:
            internals.forget_closed_connections(self._server)
        loop = trio_asyncio.current_loop.get()
        if loop is not None:
            drop_cancelled_timers(loop)
        self._calls.compact()

    @property
    def calls_open(self) -> int:
        """Calls whose handler task is running now, health and reflection streams included."""
        return self._calls.open

    @property
    def admission(self) -> Admission:
        """The run slots and their queue (see ``_admission``)."""
        return self._admission

    @property
    def open_connections(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    @property
    def held_requests(self) -> int:
        """Requests whose headers arrived without their body yet; not calls until it
        begins (see ``_held_requests``)."""
        return self._guard.held_requests

    @property
    def edge_limits(self) -> EdgeLimits:
        """The connection limits in force."""
        return self._guard.limits

    @property
    def edge_counts(self) -> EdgeCounts:
        """Connections refused at the cap and closed (idle, too many resets, errors)."""
        return self._guard.counts

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` was called or a forced drain began."""
        return self._calls.draining or self._drain_grace is not None

    @property
    def health(self) -> Health:  # a subclass; see _health.DrainAwareHealth
        """The health service; drive it with :meth:`set_serving`."""
        return self._health

    @property
    def report(self) -> DrainReport | None:
        """The report of the finished drain (forced or not), else None."""
        return self._report

    def set_serving(self, serving: bool) -> None:
        """Set the health status of the server (``""``) and of every service.

        Ignored once a drain has begun: a draining server stays NOT_SERVING.
        """
        if self._calls.draining:
            if serving:
                logger.info("set_serving(True) ignored: the server is draining")
            return
        if self._status.__status__() is not serving:
            self._status.set(serving)
            logger.info(
                "health: %s for %s",
                "SERVING" if serving else "NOT_SERVING",
                ", ".join(('""', *self._service_names)),
            )

    def skip_grace(self) -> None:
        """Cut the rest of the drain's grace period short.

        Running RPCs are then cancelled at once (their clients get UNAVAILABLE).
        Sticky: called before the drain begins, the drain skips its grace period.
        """
        if not self._skip:
            self._skip = True
            logger.info(
                "skip_grace(): cutting the grace period short (%d in flight)", self.in_flight
            )
            self._wakeup.set()

    # ------------------------------------------------------------ lifecycle ---

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the bound port through ``task_status``, serve until drained.

        Must run inside ``async with trio_asyncio.open_loop():``. Returns once a
        :meth:`drain` has finished. If cancelled without a drain (or during one),
        a forced drain (no grace) runs shielded first, so every running client gets
        UNAVAILABLE and no socket or connection outlives the call; then
        :exc:`trio.Cancelled` propagates. Errors binding (e.g. the port is taken)
        propagate before ``task_status.started()``. Calling it twice is an error.
        """
        if self._serve_called:
            raise RuntimeError("GrpcHost.serve() can run only once")
        self._serve_called = True
        if trio_asyncio.current_loop.get() is None:
            raise RuntimeError("GrpcHost.serve() must run inside trio_asyncio.open_loop()")
        try:
            # grpclib looks the asyncio loop up at construction: build it here.
            server = self._server = self._build_server()
            _http2.remember_closed_streams(self._closed_streams_remembered)
            await trio_asyncio.aio_as_trio(server.start)(self._host, self._port, ssl=self._ssl)
            self._bound_port = _listening_port(server)
            self._guard.start()
            logger.info(
                "gRPC host listening on %s:%d (%s; max request %d bytes; "
                "max %d connections, idle timeout %g s, "
                "%d streams per connection, %d pending request bytes, request timeout %g s, "
                "%d RPCs at once + %d queued)",
                self._host,
                self._bound_port,
                ", ".join(self._service_names),
                self._max_message_bytes,
                self._guard.limits.max_connections,
                self._guard.limits.idle_timeout_s,
                self._max_concurrent_streams,
                self._budget.limit,
                self._limits.request_timeout,
                self._admission.max_running,
                self._admission.max_queued,
            )
            drain = self._drain = Drain(
                server,
                self._bound_port,
                calls=self._calls,
                connections=self._connections,
                guard=self._guard,
                health=self._health,
                status=self._status,
                backoff=self._backoff,
                wakeup=self._wakeup,
                skipped=lambda: self._skip,
            )
            task_status.started(self._bound_port)
            await self._drain_requested.wait()
            assert self._drain_grace is not None
            drain.begin(self._drain_grace, reason="drain() called")
            await drain.wait_grace(self._drain_grace)
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()

    async def drain(self, grace: float) -> DrainReport:
        """Drain the server gracefully and return what happened.

        1. health goes NOT_SERVING (Watch streams see it); 2. the listening socket
        closes; 3. new RPCs, also on open connections, get UNAVAILABLE at once;
        4. in-flight RPCs get up to ``grace`` seconds (less after :meth:`skip_grace`);
        5. those still running are cancelled and their clients get UNAVAILABLE;
        6. all connections close and :meth:`serve` returns.

        The work runs in the :meth:`serve` task; this waits for it. Cancelling the
        caller only stops the wait. A second call waits for the same drain (its
        ``grace`` is ignored). :exc:`RuntimeError` before :meth:`serve` is ready.
        """
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0, got {grace!r}")
        if self._bound_port is None:
            raise RuntimeError("drain() before GrpcHost.serve() reported ready")
        if self._drain_grace is None:
            self._drain_grace = float(grace)
            self._drain_requested.set()
        await self._done.wait()
        if self._report is None:
            raise RuntimeError("the drain failed: see the exception GrpcHost.serve() raised")
        return self._report

    # --------------------------------------------------------------- server ---

    def _build_server(self) -> grpclib.server.Server:
        handlers: list[Any] = list(self._services)
        if self._reflection:
            handlers = ServerReflection.extend(handlers, pool=default_google_proto_descriptor_pool)
        handlers.append(self._health)
        server = grpclib.server.Server(self._calls.serve(handlers), codec=CompiledProtoCodec())
        internals.wrap_protocol_factory(server, self._wrap_connection)
        answer_expired_deadlines()
        self._calls.listen(server)
        return server

    def _wrap_connection(self, h2: asyncio.Protocol) -> asyncio.Protocol:
        return self._guard.wrap(h2, self._connections.track(h2))

    async def _finish(self) -> None:
        """The end of :meth:`serve`: the drain's last steps, or the forced end."""
        try:
            if self._drain is None:  # never bound
                self._guard.stop()
                if self._server is not None:
                    close_listener(self._server)
                return
            self._report = await self._drain.finish()
        finally:
            self._done.set()
