"""Every private part of grpclib, h2, trio-asyncio and asyncio the server reaches: here only.

These libraries lack what a service needs (see ``README.md``, "Pinned dependencies"):

- grpclib 0.4.9 has no graceful shutdown, no hook to see connections or to bound a call's
  request reads, no handler for unknown HTTP/2 frames, and answers some client mistakes
  with an ERROR traceback (``_host``, ``_http2``, ``_call_endings``, ``_intake``);
- trio-asyncio 0.16 runs one asyncio callback per Trio scheduler pass and keeps cancelled
  timers until they are due (``_loop``);
- asyncio's accept loop retries on a closed socket and accepts in bursts of the listen
  backlog (``_loop_errors``).

Each access below is one small function with a comment naming the attribute and why it
is needed, so that an upgrade breaks in one place. :func:`check_dependency_internals`
looks for all of them once, when the asyncio loop opens at start-up
(:func:`~._loop.open_asyncio_loop`); if one is missing the process refuses to start with
:exc:`DependencyInternalsError`, naming the package, its installed version and what is
missing. The pins in ``pyproject.toml`` are exact, and ``tests/test_dependency_internals.py``
exercises the behaviour each access provides, so an upgrade that keeps the names but
changes what they do fails there.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import grpclib.protocol
import grpclib.server
import grpclib.utils
import trio
from h2.connection import H2Connection
from h2.events import RequestReceived, StreamReset

__all__ = [
    "PINNED",
    "CallbackCheck",
    "DependencyInternalsError",
    "call_transport",
    "check_dependency_internals",
    "client_streaming",
    "event_handlers",
    "flush",
    "forget_closed_connections",
    "h2_connection",
    "intercept_request_reads",
    "listener",
    "on_timer_cancelled",
    "open_streams",
    "prune_trio_deadlines",
    "replace_timer_heap",
    "request_bytes_arrived",
    "timer_heap",
    "trailers_sent",
    "unparsed_input",
    "use_deadline_wrapper",
    "wrap_callback_check",
    "wrap_protocol_factory",
    "wrap_run_one",
    "wrap_start_serving",
]

#: The distributions whose internals are reached here, and the exact versions this
#: module was read against (``pyproject.toml`` pins the same).
PINNED = {"grpclib": "0.4.9", "h2": "4.4.1", "trio-asyncio": "0.16.0"}

#: ``BaseSelectorEventLoop._start_serving``'s leading parameters (Python 3.11 to 3.13).
START_SERVING_PARAMETERS = ["protocol_factory", "sock", "sslcontext", "server", "backlog"]


class DependencyInternalsError(RuntimeError):
    """An internal of grpclib, h2, trio-asyncio or asyncio is not as this build expects.

    ``str()`` names each missing part with its package's installed version.
    """


# ------------------------------------------------------------------ grpclib ---


def wrap_protocol_factory(
    server: grpclib.server.Server, wrap: Callable[[asyncio.Protocol], asyncio.Protocol]
) -> None:
    """Make every connection's protocol pass through ``wrap`` (before ``start()``)."""
    # Server._protocol_factory: start() passes self._protocol_factory to
    # loop.create_server(); an instance attribute shadows the method. grpclib offers no
    # other way to see connections.
    original: Callable[[], asyncio.Protocol] = server._protocol_factory

    def factory() -> asyncio.Protocol:
        return wrap(original())

    server._protocol_factory = factory


def listener(server: grpclib.server.Server) -> asyncio.Server | None:
    """The asyncio server behind a started grpclib server's listening sockets; None
    before ``start()`` completed."""
    # Server._server: None until start() binds. The public close() would also cancel
    # every running handler without answering it; closing this closes the sockets only.
    found = server._server
    if found is not None and not isinstance(found, asyncio.Server):
        raise DependencyInternalsError(
            f"grpclib Server._server is {found!r}, not an asyncio.Server"
        )
    return found


def forget_closed_connections(server: grpclib.server.Server) -> None:
    """Let grpclib drop the handlers of connections that have closed, now."""
    # Server.__gc_collect__: keeps only the handlers not closed or with tasks still
    # running; grpclib itself runs it once every ten connections made.
    server.__gc_collect__()


def trailers_sent(stream: grpclib.server.Stream[Any, Any]) -> bool:
    """Whether the call's status already went to the client."""
    # Stream._send_trailing_metadata_done: set by send_trailing_metadata(); no accessor.
    return bool(stream._send_trailing_metadata_done)


def call_transport(stream: grpclib.server.Stream[Any, Any]) -> asyncio.BaseTransport:
    """The transport of the connection a call came on (the same for all its calls)."""
    # Stream._stream: the call's grpclib.protocol.Stream; its _transport is the asyncio
    # transport of the client's connection, set at construction.
    transport = stream._stream._transport
    if not isinstance(transport, asyncio.BaseTransport):
        raise DependencyInternalsError(f"grpclib stream has transport {transport!r}")
    return transport


#: asyncio's check of a callback: ``check(callback, method)``.
CallbackCheck = Callable[[Callable[..., object], str], None]


def intercept_request_reads(
    stream: grpclib.server.Stream[Any, Any],
    reader: Callable[..., Awaitable[bytes]],
) -> None:
    """Make every read of this call's request bytes go through
    ``reader(read, size, arrived=arrived)``.

    grpclib reads each message as ``recv_data(5)`` (compression flag and length), then
    ``recv_data(length)``; ``reader`` gets the call's own ``read``, the size asked for and
    ``arrived(size)``, which tells whether ``read(size)`` would return without waiting
    for the client (the bytes, or the end of the stream, are in already); it may refuse
    (raise) before anything is read.
    """
    # Stream._stream: the call's grpclib.protocol.Stream; recv_message() reads through
    # its recv_data(size), which is ``await self.buffer.read(size)``. Patching this one
    # instance leaves other calls alone. What is stored refers to the buffer only (whose
    # ack callback holds the connection, not the stream): no reference cycle through
    # the stream, which would leave every call's stream to the cyclic GC.
    buffer = stream._stream.buffer
    stream._stream.recv_data = functools.partial(
        reader, buffer.read, arrived=functools.partial(request_bytes_arrived, buffer)
    )


def wrap_callback_check(
    loop: asyncio.AbstractEventLoop,
    wrap: Callable[[CallbackCheck], CallbackCheck],
) -> None:
    """Replace the check ``loop`` runs on every callback it is given (``check(callback,
    method)`` raises TypeError for a coroutine) with ``wrap(check)``; this loop only."""
    # BaseEventLoop._check_callback(callback, method): asyncio calls it in debug mode
    # only; trio-asyncio's call_soon, call_at and call_later always do. An instance
    # attribute shadows the method.
    loop._check_callback = wrap(loop._check_callback)  # type: ignore[attr-defined]


def request_bytes_arrived(buffer: grpclib.protocol.Buffer, size: int) -> bool:
    """Whether ``buffer.read(size)`` would return without waiting for the client."""
    # Buffer.read(size) waits only while fewer than ``size`` bytes are in and the end of
    # the stream is not: _acked_size counts the bytes taken off the queue and not yet
    # read, _unacked is the asyncio.Queue of what arrived since (UnackedData, whose
    # data_size is its length; its deque is Queue._queue), _eof marks the end queued.
    if buffer._eof:
        return True
    total: int = buffer._acked_size
    if total >= size:
        return True
    for item in buffer._unacked._queue:
        total += item.data_size
        if total >= size:
            return True
    return False


def client_streaming(stream: grpclib.server.Stream[Any, Any]) -> bool:
    """Whether the call's method takes a stream of request messages."""
    # Stream._cardinality: the method's grpclib.const.Cardinality; no accessor.
    return bool(stream._cardinality.client_streaming)


def use_deadline_wrapper(wrapper: type[grpclib.utils.DeadlineWrapper]) -> None:
    """Make grpclib servers in this process wrap each call with a deadline in ``wrapper``.

    Process-wide: grpclib offers no per-server hook.
    """
    # server.DeadlineWrapper: request_handler() constructs one per call with a deadline,
    # looking the name up in grpclib.server's globals each time.
    grpclib.server.DeadlineWrapper = wrapper


def open_streams(protocol: asyncio.Protocol) -> int:
    """How many HTTP/2 streams grpclib still tracks on one server connection.

    ``protocol`` is the connection's ``H2Protocol``. A stream is released when its
    handler has ended and written its status, rejected calls included.
    """
    # H2Protocol.processor: the EventsProcessor set by connection_made(); its
    # ``streams`` dict holds every stream not yet released.
    processor = getattr(protocol, "processor", None)
    return len(processor.streams) if processor is not None else 0


def h2_connection(protocol: asyncio.Protocol) -> H2Connection:
    """The h2 state machine of one server connection (``H2Protocol``), once made."""
    # H2Protocol.connection: grpclib's Connection, set by connection_made(); its
    # _connection is the H2Connection.
    found = protocol.connection._connection  # type: ignore[attr-defined]
    if not isinstance(found, H2Connection):
        raise DependencyInternalsError(f"grpclib connection wraps {found!r}, not an H2Connection")
    return found


def flush(protocol: asyncio.Protocol) -> None:
    """Write what h2 has queued on one server connection to its transport."""
    # H2Protocol.connection.flush(): what grpclib calls after handling each event.
    protocol.connection.flush()  # type: ignore[attr-defined]


def event_handlers(protocol: asyncio.Protocol) -> dict[type[Any], Callable[[Any], None]]:
    """The handler grpclib runs for each h2 event class on one server connection.

    Changing the dict changes this connection only. An event whose class is not in it
    makes grpclib raise ``NotImplementedError`` from ``data_received``.
    """
    # H2Protocol.processor: the EventsProcessor set by connection_made(); process()
    # looks each event's class up in its ``processors`` dict.
    handlers = protocol.processor.processors  # type: ignore[attr-defined]
    if not isinstance(handlers, dict):
        raise DependencyInternalsError(f"grpclib EventsProcessor.processors is {handlers!r}")
    return handlers


# ----------------------------------------------------------------------- h2 ---


def unparsed_input(connection: H2Connection) -> bytearray:
    """The bytes received on an HTTP/2 connection and not yet parsed into frames: at
    most an incomplete last frame after ``receive_data()``."""
    # H2Connection.incoming_buffer._data: the FrameBuffer's unparsed bytes.
    data = connection.incoming_buffer._data
    if not isinstance(data, bytearray):
        raise DependencyInternalsError(f"h2 FrameBuffer._data is {type(data)!r}")
    return data


# ------------------------------------------------------ trio-asyncio, asyncio ---

_RunOne = Callable[..., Awaitable[None]]


def wrap_run_one(loop: asyncio.AbstractEventLoop, wrap: Callable[[_RunOne], _RunOne]) -> None:
    """Replace what each pass of trio-asyncio's main-loop task runs with
    ``wrap(run_one)``; ``run_one(no_wait=...)`` runs one ready callback or due timer
    and, with ``no_wait=True``, raises :exc:`trio.WouldBlock` when there is none."""
    # TrioEventLoop._main_loop_one(no_wait): _main_loop looks it up on every pass; an
    # instance attribute shadows the method.
    loop._main_loop_one = wrap(loop._main_loop_one)  # type: ignore[attr-defined]


def timer_heap(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """trio-asyncio's heap of pending timers (cancelled ones stay until due)."""
    # TrioEventLoop._timers: a heapq list, looked up afresh at each use.
    heap: list[asyncio.TimerHandle] = loop._timers  # type: ignore[attr-defined]
    return heap


def replace_timer_heap(loop: asyncio.AbstractEventLoop, heap: list[asyncio.TimerHandle]) -> None:
    """Give trio-asyncio a new timer heap (a new list: at close it iterates the old one)."""
    loop._timers = heap  # type: ignore[attr-defined]


def _trio_deadlines() -> object:
    # trio._core._run.GLOBAL_RUN_CONTEXT.runner.deadlines: the running Runner's
    # Deadlines (a heap of (deadline, id, scope) entries); only set in the Trio thread.
    runner = getattr(trio._core._run.GLOBAL_RUN_CONTEXT, "runner", None)
    return getattr(runner, "deadlines", None)


def prune_trio_deadlines() -> None:
    """Make Trio drop its deadline heap's entries of exited cancel scopes now."""
    # Deadlines._prune(): rebuilds the heap from the entries whose deadline is still
    # registered; Deadlines.expire() calls it once stale entries pass a threshold.
    _trio_deadlines()._prune()  # type: ignore[attr-defined]


def on_timer_cancelled(
    loop: asyncio.AbstractEventLoop, hook: Callable[[asyncio.TimerHandle], None]
) -> None:
    """Call ``hook(handle)`` whenever a timer of ``loop`` is cancelled."""
    # TrioEventLoop._timer_handle_cancelled: TimerHandle.cancel() calls it (a no-op in
    # trio-asyncio) just before marking the handle cancelled.
    loop._timer_handle_cancelled = hook  # type: ignore[attr-defined]


def wrap_start_serving(
    loop: asyncio.AbstractEventLoop, wrap: Callable[[Callable[..., None]], Callable[..., None]]
) -> inspect.Signature:
    """Replace ``loop``'s accept-loop entry with ``wrap(start_serving)``; returns the
    original's signature (see :data:`START_SERVING_PARAMETERS`)."""
    # BaseSelectorEventLoop._start_serving(protocol_factory, sock, sslcontext, server,
    # backlog, ...): Server.start_serving and the retry one second after an accept
    # error look it up on the loop; ``backlog`` bounds the accepts per wake-up.
    original: Callable[..., None] = loop._start_serving  # type: ignore[attr-defined]
    loop._start_serving = wrap(original)  # type: ignore[attr-defined]
    return inspect.signature(original)


# -------------------------------------------------------------- the check ---


@attrs.frozen
class _Requirement:
    package: str
    what: str
    present: Callable[[asyncio.AbstractEventLoop], bool]


def _sets(cls: type, *names: str) -> Callable[[asyncio.AbstractEventLoop], bool]:
    """Whether ``cls.__init__`` refers to attributes ``names`` (it sets them)."""

    def present(_loop: asyncio.AbstractEventLoop) -> bool:
        init = vars(cls).get("__init__")
        return init is not None and set(names) <= set(init.__code__.co_names)

    return present


def _has_parameters(
    owner: object, name: str, parameters: list[str]
) -> Callable[[asyncio.AbstractEventLoop], bool]:
    def present(loop: asyncio.AbstractEventLoop) -> bool:
        function = getattr(loop if owner is None else owner, name, None)
        if not callable(function):
            return False
        return list(inspect.signature(function).parameters)[: len(parameters)] == parameters

    return present


def _events_processor_handles(loop: asyncio.AbstractEventLoop) -> bool:
    handlers = getattr(grpclib.protocol.EventsProcessor(None, None), "processors", None)
    return isinstance(handlers, dict) and {StreamReset, RequestReceived} <= set(handlers)


_REQUIREMENTS = (
    _Requirement(
        "grpclib",
        "grpclib.server.Server._protocol_factory",
        lambda _: (
            callable(getattr(grpclib.server.Server, "_protocol_factory", None))
            and "_protocol_factory" in grpclib.server.Server.start.__code__.co_names
        ),
    ),
    _Requirement(
        "grpclib", "grpclib.server.Server._server", _sets(grpclib.server.Server, "_server")
    ),
    _Requirement(
        "grpclib",
        "grpclib.server.Server.__gc_collect__",
        lambda _: callable(getattr(grpclib.server.Server, "__gc_collect__", None)),
    ),
    _Requirement(
        "grpclib",
        "grpclib.server.Stream._send_trailing_metadata_done",
        lambda _: getattr(grpclib.server.Stream, "_send_trailing_metadata_done", None) is False,
    ),
    _Requirement(
        "grpclib",
        "grpclib.server.Stream._stream and ._cardinality",
        _sets(grpclib.server.Stream, "_stream", "_cardinality"),
    ),
    _Requirement(
        "grpclib",
        "grpclib.protocol.Stream._transport and .recv_data(size), which reads .buffer",
        lambda loop: (
            _sets(grpclib.protocol.Stream, "_transport")(loop)
            and inspect.iscoroutinefunction(getattr(grpclib.protocol.Stream, "recv_data", None))
            and grpclib.protocol.Stream.recv_data.__code__.co_names == ("buffer", "read")
        ),
    ),
    _Requirement(
        "grpclib",
        "grpclib.server.DeadlineWrapper (a grpclib.utils.DeadlineWrapper)",
        lambda _: (
            isinstance(getattr(grpclib.server, "DeadlineWrapper", None), type)
            and issubclass(grpclib.server.DeadlineWrapper, grpclib.utils.DeadlineWrapper)
        ),
    ),
    _Requirement(
        "grpclib",
        "grpclib.protocol.H2Protocol.connection and .processor",
        lambda _: (
            {"connection", "processor"}
            <= set(getattr(grpclib.protocol.H2Protocol, "__annotations__", {}))
        ),
    ),
    _Requirement(
        "grpclib",
        "grpclib.protocol.Connection._connection and .flush()",
        lambda loop: (
            _sets(grpclib.protocol.Connection, "_connection")(loop)
            and callable(getattr(grpclib.protocol.Connection, "flush", None))
        ),
    ),
    _Requirement(
        "grpclib",
        "grpclib.protocol.EventsProcessor.processors (a dict of h2 event handlers) and .streams",
        lambda loop: (
            _events_processor_handles(loop)
            and _sets(grpclib.protocol.EventsProcessor, "streams")(loop)
        ),
    ),
    _Requirement(
        "grpclib",
        "grpclib.protocol.Buffer()._eof, ._acked_size and ._unacked._queue",
        lambda _: _buffer_readable(),
    ),
    _Requirement(
        "h2",
        "h2.connection.H2Connection().incoming_buffer._data",
        lambda _: isinstance(getattr(H2Connection().incoming_buffer, "_data", None), bytearray),
    ),
    _Requirement(
        "h2",
        "h2.connection.H2Connection.MAX_CLOSED_STREAMS",
        lambda _: isinstance(getattr(H2Connection, "MAX_CLOSED_STREAMS", None), int),
    ),
    _Requirement(
        "trio-asyncio",
        "TrioEventLoop._main_loop_one(no_wait)",
        lambda loop: (
            "no_wait" in inspect.signature(getattr(loop, "_main_loop_one", lambda: None)).parameters
        ),
    ),
    _Requirement(
        "trio-asyncio",
        "TrioEventLoop._timers (a list) and ._timer_handle_cancelled",
        lambda loop: (
            isinstance(getattr(loop, "_timers", None), list)
            and callable(getattr(loop, "_timer_handle_cancelled", None))
        ),
    ),
    _Requirement(
        "trio-asyncio",
        "TrioEventLoop._check_callback(callback, method)",
        _has_parameters(None, "_check_callback", ["callback", "method"]),
    ),
    _Requirement(
        "trio",
        "trio._core._run.GLOBAL_RUN_CONTEXT.runner.deadlines._prune()",
        lambda _: callable(getattr(_trio_deadlines(), "_prune", None)),
    ),
    _Requirement(
        "python",
        "asyncio BaseSelectorEventLoop._start_serving(" + ", ".join(START_SERVING_PARAMETERS) + ")",
        _has_parameters(None, "_start_serving", START_SERVING_PARAMETERS),
    ),
)


def _buffer_readable() -> bool:
    buffer = grpclib.protocol.Buffer(lambda _size: None)
    buffer.add(b"abc", 3)
    return (
        buffer._eof is False
        and buffer._acked_size == 0
        and request_bytes_arrived(buffer, 3)
        and not request_bytes_arrived(buffer, 4)
    )


def _version(package: str) -> str:
    if package == "python":
        import platform

        return platform.python_version()
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def missing_internals(loop: asyncio.AbstractEventLoop) -> list[str]:
    """What :func:`check_dependency_internals` would refuse, one line each."""
    missing = []
    for requirement in _REQUIREMENTS:
        try:
            present = requirement.present(loop)
        except Exception:  # a shape so different that looking raised
            present = False
        if not present:
            expected = PINNED.get(requirement.package)
            pin = (
                f" (this build is verified with {requirement.package}=={expected})"
                if expected
                else ""
            )
            missing.append(
                f"{requirement.package} {_version(requirement.package)} has no "
                f"{requirement.what}{pin}"
            )
    return missing


def check_dependency_internals(loop: asyncio.AbstractEventLoop) -> None:
    """Raise :exc:`DependencyInternalsError` unless every internal used here is present.

    ``loop`` is the running trio-asyncio loop. Run once at start-up, before anything is
    patched or served.
    """
    missing = missing_internals(loop)
    if missing:
        raise DependencyInternalsError(
            "cannot start: " + "; ".join(missing) + " (see README, Pinned dependencies)"
        )
