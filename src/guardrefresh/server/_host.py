"""A grpclib server hosted inside Trio (through trio-asyncio) with a real graceful drain.

grpclib alone cannot shut down gracefully: ``Server.close()`` cancels running handlers
without telling their clients, and open connections keep accepting new calls. The host
adds what is missing, on the asyncio side of the one thread both loops share:

- A ``RecvRequest`` listener sees every call before its handler. It answers new calls
  with UNAVAILABLE while draining, and swaps the handler for a wrapper that registers
  the call with its asyncio task and grpclib stream.
- In-flight counting keys on the request's asyncio *task*: the call leaves the count
  from the task's done-callback, i.e. after grpclib has sent its trailers and released
  the stream, never merely when the handler function returned. So a drain that sees
  zero in flight can close connections without cutting off a response on the wire.
- A forced end cancels each remaining task after marking it; the wrapper turns that
  cancellation into ``GRPCError(UNAVAILABLE)``, which grpclib itself sends as trailers.
  A client therefore always gets a status, never a hang until its own deadline.
- Each connection's protocol is wrapped (``_drain.wrap_protocol_factory``) so the host
  knows its transport and can close it at the end; outermost, the connection guard
  (``_connections``) contains each connection's errors and enforces the edge limits
  (connection cap, idle timeout, stream-reset and unread-output bounds).

Health (``grpc.health.v1.Health``) and reflection streams are exempt from counting and
rejection: probes keep working during the drain and report NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl as _ssl
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any, NoReturn

import attrs
import grpclib.events
import grpclib.server
import trio
import trio_asyncio
import trio_util
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.service import ServerReflection

from guardrefresh.proto.google_proto_descriptor_pool import default_google_proto_descriptor_pool

from . import _drain
from ._admission import Admission, default_max_queued, default_max_running
from ._budget import ByteBudget
from ._codec import CompiledProtoCodec
from ._connections import ConnectionGuard, EdgeCounts, EdgeLimits
from ._intake import RequestLimits, RequestReader, ShedBackoff
from ._loop import drop_cancelled_timers

__all__ = ["DEFAULT_EXEMPT_METHODS", "SHUTDOWN_MESSAGE", "DrainReport", "GrpcHost"]

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

# Bounds on the forced end, so that a handler that swallows cancellation or a peer
# that stops reading cannot hold the shutdown: how long cancelled handlers get to
# send their trailers, how long clients get to close their side, then how long a
# closing connection gets to flush before abort.
_CANCEL_WAIT_S = 1.0
_HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
_LINGER_S = 1.0
_POLL_S = 0.005  # grpclib says nothing when a stream is released
_CLOSE_WAIT_S = 1.0
_ABORT_WAIT_S = 0.5

#: Closed HTTP/2 streams each connection remembers (see _drain.remember_closed_streams):
#: ten times the 100 streams a client may have open at once (h2's default
#: MAX_CONCURRENT_STREAMS), so that any frame still in flight when its stream closed
#: meets a remembered stream; about 0.2 MB per connection instead of h2's 12-15 MB.
CLOSED_STREAMS_REMEMBERED = 1000

#: HTTP/2 streams a client may have open at once on one connection (SETTINGS).
MAX_CONCURRENT_STREAMS = 100
#: Bytes of request bodies being received or waiting for a run slot, process-wide.
MAX_PENDING_REQUEST_BYTES = 64 * 1024 * 1024
#: Seconds a call's request message may take to arrive.
REQUEST_TIMEOUT_S = 30.0
#: Seconds a connection is not read after one of its calls was shed (see _intake).
SHED_PAUSE_S = 4.0
#: Streams a connection may have open at once after one of its calls was shed: as
#: many as a client sending one call at a time (see _intake.ShedBackoff) ...
SHED_STREAMS = 1
#: ... until it has gone this many seconds without a shed.
SHED_FORGIVE_S = 30.0


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class DrainReport:
    """What one drain did. ``in_flight_at_start == completed + cancelled``."""

    #: RPCs running when the drain began (health and reflection streams excluded).
    in_flight_at_start: int = attrs.field(
        validator=[attrs.validators.instance_of(int), _non_negative]
    )
    #: Of those, the ones that answered by themselves before the grace period ended.
    completed: int = attrs.field(validator=[attrs.validators.instance_of(int), _non_negative])
    #: Of those, the ones cancelled at the end of grace; their clients got UNAVAILABLE.
    cancelled: int = attrs.field(validator=[attrs.validators.instance_of(int), _non_negative])
    #: New RPCs answered UNAVAILABLE during the drain.
    rejected: int = attrs.field(validator=[attrs.validators.instance_of(int), _non_negative])
    #: Connections still open at the end, closed by the drain.
    connections_closed: int = attrs.field(
        validator=[attrs.validators.instance_of(int), _non_negative]
    )
    #: From the start of the drain to the last connection closed (Trio clock).
    duration_s: float = attrs.field(validator=[attrs.validators.instance_of(float), _non_negative])

    def __attrs_post_init__(self) -> None:
        if self.completed + self.cancelled != self.in_flight_at_start:
            raise ValueError(
                f"completed ({self.completed}) + cancelled ({self.cancelled}) != "
                f"in_flight_at_start ({self.in_flight_at_start})"
            )


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


class _TrackedConnection(asyncio.Protocol):
    """Passes everything to grpclib's ``H2Protocol``; tells the host about the transport.

    At the end of a drain the host closes it in steps (:meth:`ignore_input`, then
    :meth:`half_close` once it is not :attr:`busy`) so that no client loses a status
    it was sent.
    """

    def __init__(self, inner: asyncio.Protocol, host: GrpcHost) -> None:
        self._inner = inner
        self._host = host
        self._ignoring_input = False
        self.transport: asyncio.BaseTransport | None = None

    def ignore_input(self) -> None:
        """From now on read and drop whatever the client sends; grpclib sees none of it.

        Nothing the client says can matter once every call has ended, and reading on
        is what keeps the kernel from answering it with RST (see :meth:`half_close`).
        """
        self._ignoring_input = True

    @property
    def busy(self) -> bool:
        """Whether grpclib still has a stream open here (an answer not yet written)."""
        return _drain.open_streams(self._inner) > 0

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
        self._host._connection_made(self)
        self._inner.connection_made(transport)
        _drain.remember_closed_streams(self._inner, self._host._closed_streams_remembered)
        _drain.advertise_max_concurrent_streams(self._inner, self._host._max_concurrent_streams)

    def limit_streams(self, limit: int) -> None:
        """Advertise ``limit`` as the streams the client may have open at once."""
        try:
            _drain.advertise_max_concurrent_streams(self._inner, limit)
        except Exception as exc:  # a connection whose HTTP/2 state is closed already
            logger.debug("cannot change the stream limit of a connection: %r", exc)

    @property
    def closed_streams_remembered(self) -> int:
        """How many ended calls' streams this connection's HTTP/2 state still remembers."""
        return _drain.closed_streams_remembered(self._inner)

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
            self._host._connection_lost(self)


def _service_name(service: object) -> str:
    mapping = getattr(service, "__mapping__", None)
    if mapping is None:
        raise TypeError(f"{service!r} is not a grpclib service (no __mapping__)")
    path = next(iter(mapping()), None)
    if not isinstance(path, str) or path.count("/") != 2:
        raise TypeError(f"{service!r} has no methods")
    return path.split("/")[1]


class _DrainAwareHealth(Health):  # type: ignore[misc]  # grpclib is not type-checked (pyproject)
    """grpclib's ``Health`` whose Watch streams end cleanly when the host closes.

    Every service and the overall server (``""``) share one status. grpclib's own
    Watch only stops when cancelled, which can overtake the NOT_SERVING it was about
    to send; here :meth:`close` wakes each Watch stream, which sends the current
    status if its client has not seen it yet and then ends with UNAVAILABLE.
    """

    def __init__(self, services: Sequence[object], status: ServiceStatus) -> None:
        super().__init__({service: [status] for service in services})
        self._shared_status = status
        self._names = frozenset({"", *(_service_name(s) for s in services)})
        self._closing = False
        self._watchers: set[asyncio.Event] = set()

    def close(self) -> None:
        self._closing = True
        for changed in self._watchers:
            changed.set()

    async def Watch(
        self, stream: grpclib.server.Stream[HealthCheckRequest, HealthCheckResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        known = request.service in self._names
        changed = await self._shared_status.__subscribe__()
        self._watchers.add(changed)
        try:
            sent = None
            while True:
                changed.clear()
                if not known:
                    status = HealthCheckResponse.SERVICE_UNKNOWN
                elif self._shared_status.__status__():
                    status = HealthCheckResponse.SERVING
                else:
                    status = HealthCheckResponse.NOT_SERVING
                if status != sent:
                    await stream.send_message(HealthCheckResponse(status=status))
                    sent = status
                if self._closing:
                    raise GRPCError(Status.UNAVAILABLE, SHUTDOWN_MESSAGE)
                await changed.wait()
        finally:
            self._watchers.discard(changed)
            await self._shared_status.__unsubscribe__(changed)


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
    long-lived connection). ``exempt_methods`` (full paths) are neither counted
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
        max_message_bytes: int = 4 * 1024 * 1024,
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
        self._guard = ConnectionGuard(edge_limits if edge_limits is not None else EdgeLimits())
        if not 1 <= max_concurrent_streams <= 2**31 - 1:
            raise ValueError(
                f"max_concurrent_streams must be in 1..2**31-1, got {max_concurrent_streams}"
            )
        self._max_concurrent_streams = max_concurrent_streams
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0, got {request_timeout!r}")
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
        self._calls_ended: trio_util.AsyncValue[int] = trio_util.AsyncValue(0)
        self._limits = RequestLimits(
            max_message_bytes=max_message_bytes,
            budget=self._budget,
            request_timeout=float(request_timeout),
            admission=self._admission,
            backoff=self._backoff,
        )
        self._services = tuple(services)
        self._service_names = tuple(_service_name(s) for s in self._services)
        self._host = host
        self._port = port
        self._max_message_bytes = max_message_bytes
        if ssl is not None:
            # gRPC over TLS negotiates HTTP/2 by ALPN; grpcio refuses a server without it.
            ssl.set_alpn_protocols(["h2"])
        self._ssl = ssl
        self._reflection = reflection
        self._exempt = frozenset(exempt_methods)
        self._on_call_done = on_call_done
        # Called with (method, request metadata) before any handler runs; raises
        # GRPCError (e.g. UNAUTHENTICATED) to refuse the call.
        self._authorize = authorize
        self._outcomes: dict[asyncio.Task[Any], _Outcome] = {}

        self._status = ServiceStatus()
        self._status.set(False)
        self._health = _DrainAwareHealth(self._services, self._status)

        self._server: grpclib.server.Server | None = None
        self._bound_port: int | None = None
        self._serve_called = False
        self._calls: set[_Call] = set()
        self._connections: set[_TrackedConnection] = set()
        self._by_transport: dict[asyncio.BaseTransport, _TrackedConnection] = {}
        self._wakeup = trio.Event()

        self._drain_grace: float | None = None
        self._drain_requested = trio.Event()
        self._draining = False
        self._drain_started_at = 0.0
        self._in_flight_at_start = 0
        self._rejected = 0
        self._skip = False
        self._grace_over = False
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
        """RPCs running now, health and reflection streams excluded."""
        return sum(1 for call in self._calls if not call.exempt)

    @property
    def request_budget(self) -> ByteBudget:
        """Bytes of request bodies being received or waiting for a slot (see ``_budget``)."""
        return self._budget

    @property
    def calls_ended(self) -> trio_util.AsyncValue[int]:
        """Calls whose task has ended since the host was made (only grows)."""
        return self._calls_ended

    def forget_closed_connections(self) -> None:
        """Let grpclib drop what it keeps of connections that have closed (see
        ``_drain.forget_closed_connections``); the cyclic GC then frees it.

        Also, for the trim after a burst: drops the loop's cancelled timers
        (:func:`~._loop.drop_cancelled_timers`) and rebuilds the per-call containers,
        whose tables keep the size they grew to in the burst (a dict or set never
        shrinks on deletion).
        """
        if self._server is not None:
            _drain.forget_closed_connections(self._server)
        loop = trio_asyncio.current_loop.get()
        if loop is not None:
            drop_cancelled_timers(loop)
        self._outcomes = dict(self._outcomes)
        self._calls = set(self._calls)

    @property
    def calls_open(self) -> int:
        """Calls whose handler task is running now, health and reflection streams included."""
        return len(self._calls)

    @property
    def admission(self) -> Admission:
        """The run slots and their queue (see ``_admission``)."""
        return self._admission

    @property
    def open_connections(self) -> int:
        """Client connections open now."""
        return len(self._connections)

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
        return self._draining or self._drain_grace is not None

    @property
    def health(self) -> Health:  # a subclass; see _DrainAwareHealth
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
        if self._draining:
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
            await trio_asyncio.aio_as_trio(server.start)(self._host, self._port, ssl=self._ssl)
            self._bound_port = _drain.listening_port(server)
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
            task_status.started(self._bound_port)
            await self._drain_requested.wait()
            assert self._drain_grace is not None
            self._begin_drain(self._drain_grace, reason="drain() called")
            await self._wait_grace(self._drain_grace)
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
        server = grpclib.server.Server(handlers, codec=CompiledProtoCodec())
        _drain.check_internals(server)
        _drain.wrap_protocol_factory(server, self._wrap_connection)
        _drain.answer_expired_deadlines()
        grpclib.events.listen(server, grpclib.events.RecvRequest, self._on_recv_request)
        if self._on_call_done is not None:
            grpclib.events.listen(
                server, grpclib.events.SendTrailingMetadata, self._on_send_trailing_metadata
            )
        return server

    def _wrap_connection(self, h2: asyncio.Protocol) -> asyncio.Protocol:
        return self._guard.wrap(h2, _TrackedConnection(h2, host=self))

    async def _on_recv_request(self, event: grpclib.events.RecvRequest) -> None:
        # asyncio side, in the request's task, before the handler runs.
        method: str = event.method_name
        exempt = method in self._exempt
        if self._on_call_done is not None:
            self._track_outcome(method)
        if self._draining and not exempt:
            self._reject(method)
        if self._authorize is not None:
            self._authorize(method, event.metadata)
        event.method_func = self._wrap_handler(event.method_func, method, exempt)

    def _wrap_handler(
        self,
        func: Callable[[grpclib.server.Stream[Any, Any]], Any],
        method: str,
        exempt: bool,
    ) -> Callable[[grpclib.server.Stream[Any, Any]], Any]:
        async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
            # Listeners registered after ours may have awaited: check again.
            if self._draining and not exempt:
                self._reject(method)
            task = asyncio.current_task()
            assert task is not None
            reader = RequestReader(
                self._limits, connection=_drain.connection_of(stream), admit=not exempt
            )
            call = _Call(task=task, stream=stream, method=method, exempt=exempt, reader=reader)
            outcome = self._outcomes.get(task)
            if outcome is not None:
                outcome.stream = stream
            self._calls.add(call)
            task.add_done_callback(functools.partial(self._call_done, call))
            _drain.intercept_request_reads(stream, reader.read)
            _drain.require_request_message(stream)
            try:
                await func(stream)
            except asyncio.CancelledError:
                if not call.forced:
                    raise  # client reset, lost connection, deadline: grpclib's business
                task.uncancel()
                # grpclib sends a GRPCError leaving the handler as the call's trailers.
                raise GRPCError(Status.UNAVAILABLE, SHUTDOWN_MESSAGE) from None

        return handle

    def _track_outcome(self, method: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        outcome = _Outcome(method=method, started=trio.current_time())
        self._outcomes[task] = outcome
        task.add_done_callback(functools.partial(self._report_outcome, outcome))

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
        if outcome.stream is not None and not _drain.trailers_sent(outcome.stream):
            # grpclib tried (UNKNOWN, after the reset) but the client had gone:
            # from its side the call was cancelled.
            status = None
        if status is None:
            status = Status.CANCELLED
        try:
            self._on_call_done(outcome.method, status, trio.current_time() - outcome.started)
        except Exception:
            logger.exception("on_call_done(%r, %s) failed", outcome.method, status.name)

    def _reject(self, method: str) -> NoReturn:
        self._rejected += 1
        logger.debug("rejected %s: draining", method)
        raise GRPCError(Status.UNAVAILABLE, SHUTDOWN_MESSAGE)

    def _call_done(self, call: _Call, _task: asyncio.Task[Any]) -> None:
        # Runs after grpclib sent the trailers and released the stream.
        call.reader.finish()
        self._calls.discard(call)
        self._calls_ended.value += 1
        self._wakeup.set()

    def _connection_made(self, connection: _TrackedConnection) -> None:
        self._connections.add(connection)
        if connection.transport is not None:
            self._by_transport[connection.transport] = connection

    def _connection_lost(self, connection: _TrackedConnection) -> None:
        self._connections.discard(connection)
        if connection.transport is not None:
            self._by_transport.pop(connection.transport, None)
        self._wakeup.set()

    def _limit_streams(self, transport: Hashable, limit: int | None) -> None:
        # From ShedBackoff: SETTINGS_MAX_CONCURRENT_STREAMS of one connection, down to
        # ``limit`` after a shed, back to the usual value (None) once forgiven.
        connection = self._by_transport.get(transport)  # type: ignore[call-overload]
        if connection is None or self._draining:
            return
        connection.limit_streams(self._max_concurrent_streams if limit is None else limit)

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    # ---------------------------------------------------------------- drain ---

    def _begin_drain(self, grace: float, *, reason: str) -> None:
        assert self._server is not None and self._bound_port is not None
        self._draining = True
        self._guard.stop()
        self._drain_started_at = trio.current_time()
        self._in_flight_at_start = self.in_flight
        exempt_open = len(self._calls) - self._in_flight_at_start

        self._status.set(False)
        self._backoff.resume_all()  # the drain reads on until clients close their side
        logger.info(
            "drain 1/6 (%s): health NOT_SERVING; %d RPCs in flight, "
            "%d health/reflection streams open, grace %.3f s",
            reason,
            self._in_flight_at_start,
            exempt_open,
            grace,
        )
        _drain.close_listener(self._server)
        logger.info(
            "drain 2/6: listening socket on port %d closed; %d connections open",
            self._bound_port,
            len(self._connections),
        )
        logger.info(
            "drain 3/6: new RPCs answered UNAVAILABLE (%d exempt methods keep answering)",
            len(self._exempt),
        )

    async def _wait_grace(self, grace: float) -> None:
        why = "serve() cancelled"
        try:
            with trio.move_on_after(grace):
                await self._wait_for(lambda: self._skip or self.in_flight == 0)
            why = "grace period over"
        finally:
            self._log_grace_over(why)

    def _log_grace_over(self, why: str) -> None:
        self._grace_over = True
        still = self.in_flight
        if still == 0:
            why = "all in-flight RPCs done"
        elif self._skip:
            why = "skip_grace()"
        logger.info(
            "drain 4/6: waited %.3f s (%s): %d of %d RPCs completed, %d still running",
            trio.current_time() - self._drain_started_at,
            why,
            self._in_flight_at_start - still,
            self._in_flight_at_start,
            still,
        )

    async def _finish(self) -> None:
        """Steps 5 and 6, and the forced end; runs shielded, bounded in time."""
        server = self._server
        try:
            if server is None or self._bound_port is None:
                self._guard.stop()
                if server is not None:
                    _drain.close_listener(server)
                return
            if not self._draining:
                self._begin_drain(0.0, reason="serve() cancelled: forced")
            if not self._grace_over:
                self._log_grace_over("no grace: serve() cancelled")

            cancelled = 0
            exempt_ended = 0
            for call in list(self._calls):
                if call.exempt:
                    exempt_ended += 1
                    if call.method == _HEALTH_WATCH:
                        continue  # ends by itself after its final status, see below
                elif not _drain.trailers_sent(call.stream):
                    cancelled += 1
                call.forced = True
                call.task.cancel()
            self._health.close()
            with trio.move_on_after(_CANCEL_WAIT_S):
                await self._wait_for(lambda: not self._calls)
            if self._calls:
                logger.warning(
                    "drain: %d handlers ignored cancellation for %.1f s; closing their connections",
                    len(self._calls),
                    _CANCEL_WAIT_S,
                )
            logger.info(
                "drain 5/6: cancelled %d RPCs with UNAVAILABLE, ended %d health/reflection "
                "streams; %d new RPCs were rejected",
                cancelled,
                exempt_ended,
                self._rejected,
            )

            connections_closed = len(self._connections)
            await self._close_connections()
            # grpclib's own bookkeeping; nothing is left for it to cancel.
            server.close()
            with trio.move_on_after(_CANCEL_WAIT_S):
                await trio_asyncio.aio_as_trio(server.wait_closed)()

            self._report = DrainReport(
                in_flight_at_start=self._in_flight_at_start,
                completed=self._in_flight_at_start - cancelled,
                cancelled=cancelled,
                rejected=self._rejected,
                connections_closed=connections_closed,
                duration_s=float(trio.current_time() - self._drain_started_at),
            )
            logger.info(
                "drain 6/6: closed %d connections; drain done in %.3f s: %s",
                connections_closed,
                self._report.duration_s,
                self._report,
            )
        finally:
            self._done.set()

    async def _close_connections(self) -> None:
        """End every connection, in bounded steps, without losing a status owed to a client."""
        if self._calls:
            # Handlers that ignored cancellation may still write, and their clients
            # wait for answers that will not come: only closing ends both.
            for connection in list(self._connections):
                connection.close()
        else:
            for connection in list(self._connections):
                connection.ignore_input()
            # A request read just before that (one the drain rejects, mostly) still
            # gets its status written; grpclib raises on a write after the FIN.
            with trio.move_on_after(_CANCEL_WAIT_S):
                while any(connection.busy for connection in self._connections):  # noqa: ASYNC110
                    await trio.sleep(_POLL_S)
            for connection in list(self._connections):
                connection.half_close()
            if not await self._connections_gone_within(_LINGER_S):
                logger.info(
                    "drain: closing %d connections whose clients did not close their side",
                    len(self._connections),
                )
                for connection in list(self._connections):
                    connection.close()
        if not await self._connections_gone_within(_CLOSE_WAIT_S):
            logger.warning(
                "drain: %d connections did not flush in %.1f s; aborting them",
                len(self._connections),
                _CLOSE_WAIT_S,
            )
            for connection in list(self._connections):
                connection.abort()
            await self._connections_gone_within(_ABORT_WAIT_S)

    async def _connections_gone_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every connection to be lost; whether they were."""
        with trio.move_on_after(seconds):
            await self._wait_for(lambda: not self._connections)
        return not self._connections
