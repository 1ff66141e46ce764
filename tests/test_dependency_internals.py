"""Canaries for every third-party internal the server reaches (``_dependency_internals``).

Each test exercises the behaviour one internal provides, on plain grpclib / h2 /
trio-asyncio objects (not through GrpcHost), and fails loudly if an upgrade changes it:
a renamed attribute fails the start-up check (tested here too), a kept name with new
behaviour fails the canary. Real sockets on 127.0.0.1, grpcio or a raw h2 client as the
peer, the real clock.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import socket
import subprocess
import sys
import time
import tomllib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpclib.const
import grpclib.protocol
import grpclib.server
import grpclib.utils
import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame
import pytest
import trio
import trio.testing
import trio_asyncio
from grpcio_support import Outcome, call_outcome, grpc_request_headers
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from h2.connection import H2Connection
from support.service import service_env
from support.waiting import in_thread
from support.waiting import wait_until_async as wait_until

from guardrefresh.server import DependencyInternalsError, open_asyncio_loop
from guardrefresh.server import _dependency_internals as internals
from guardrefresh.server._loop_errors import ACCEPTS_PER_WAKEUP

UNARY = "/canary.Canary/Unary"
STREAM_IN = "/canary.Canary/StreamIn"
OK = grpc.StatusCode.OK

Handler = Callable[[grpclib.server.Stream[Any, Any]], Awaitable[None]]


async def _answer(stream: grpclib.server.Stream[Any, Any]) -> None:
    request = await stream.recv_message()
    await stream.send_message(HealthCheckResponse(status=HealthCheckResponse.SERVING))
    assert request is not None


class Canary:
    """A grpclib servable with a unary and a client-streaming method; both run ``on_call``."""

    def __init__(self) -> None:
        self.on_call: Handler = _answer

    async def _call(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await self.on_call(stream)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            UNARY: grpclib.const.Handler(
                self._call,
                grpclib.const.Cardinality.UNARY_UNARY,
                HealthCheckRequest,
                HealthCheckResponse,
            ),
            STREAM_IN: grpclib.const.Handler(
                self._call,
                grpclib.const.Cardinality.STREAM_UNARY,
                HealthCheckRequest,
                HealthCheckResponse,
            ),
        }


class _Closable(asyncio.Protocol):
    """Passes every callback on to ``inner``; keeps the transport so the test can close it
    (plain grpclib leaves open connections open when it closes)."""

    def __init__(self, inner: asyncio.Protocol, open_set: set[_Closable]) -> None:
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self._open = open_set

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._open.add(self)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        self.inner.connection_lost(exc)


@asynccontextmanager
async def open_server(
    canary: Canary, *, wrap: Callable[[asyncio.Protocol], asyncio.Protocol] | None = None
) -> AsyncIterator[tuple[grpclib.server.Server, int]]:
    """A plain grpclib Server with ``canary`` on 127.0.0.1:0 (protocols through ``wrap``);
    at exit its connections are closed, then the server."""
    open_connections: set[_Closable] = set()

    def closable(protocol: asyncio.Protocol) -> asyncio.Protocol:
        return _Closable(wrap(protocol) if wrap is not None else protocol, open_connections)

    async with open_asyncio_loop():
        server = grpclib.server.Server([canary])
        internals.wrap_protocol_factory(server, closable)
        await trio_asyncio_call(server.start, "127.0.0.1", 0)
        try:
            listener = internals.listener(server)
            assert listener is not None
            yield server, listener.sockets[0].getsockname()[1]
        finally:
            for connection in list(open_connections):
                assert connection.transport is not None
                connection.transport.close()
            await wait_until(lambda: not open_connections)
            server.close()
            await trio_asyncio_call(server.wait_closed)


async def trio_asyncio_call(
    function: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
) -> Any:
    return await trio_asyncio.aio_as_trio(function)(*args, **kwargs)


def recording(protocols: list[asyncio.Protocol]) -> Callable[[asyncio.Protocol], asyncio.Protocol]:
    def wrap(protocol: asyncio.Protocol) -> asyncio.Protocol:
        protocols.append(protocol)
        return protocol

    return wrap


class Channel:
    """A grpcio channel (one HTTP/2 connection) calling the canary; use from threads."""

    def __init__(self, port: int) -> None:
        # Its own subchannel pool: grpcio would share one connection between channels.
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._unary = self.channel.unary_unary(
            UNARY,
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )
        self._stream_in = self.channel.stream_unary(
            STREAM_IN,
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )

    def unary(self, service: str = "canary", timeout: float | None = 10.0) -> Outcome:
        return call_outcome(
            lambda: self._unary(HealthCheckRequest(service=service), timeout=timeout)
        )

    def stream_in(self) -> Outcome:
        return call_outcome(lambda: self._stream_in(iter([HealthCheckRequest()]), timeout=10.0))

    def close(self) -> None:
        self.channel.close()


# ------------------------------------------------------------------ the pins ---


def test_the_installed_versions_are_the_pinned_ones() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = {
        requirement.split("==")[0]: requirement.split("==")[1]
        for requirement in pyproject["project"]["dependencies"]
        if "==" in requirement
    }
    for package, version in internals.PINNED.items():
        assert pins.get(package) == version, f"pyproject pins {package} to {pins.get(package)}"
        assert importlib.metadata.version(package) == version, package


async def test_every_internal_is_present_at_start_up() -> None:
    async with open_asyncio_loop() as loop:
        assert internals.missing_internals(loop) == []


async def test_a_missing_internal_refuses_to_start_naming_package_version_and_attribute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(grpclib.server.Stream, "_send_trailing_metadata_done")
    with pytest.RaisesGroup(
        pytest.RaisesExc(
            DependencyInternalsError,
            match=r"cannot start: grpclib 0\.4\.9 has no "
            r"grpclib\.server\.Stream\._send_trailing_metadata_done "
            r"\(this build is verified with grpclib==0\.4\.9\)",
        ),
        flatten_subgroups=True,
    ):
        async with open_asyncio_loop():
            pytest.fail("the loop opened without the internal")


#: ``python -m guardrefresh`` with one internal of h2 gone (as a changed h2 would have it).
_WITHOUT_MAX_CLOSED_STREAMS = """
import sys
import h2.connection
del h2.connection.H2Connection.MAX_CLOSED_STREAMS
from guardrefresh.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


async def test_the_service_exits_1_naming_the_missing_internal(tmp_path: Path) -> None:
    with trio.fail_after(60):
        result = await trio.run_process(
            [
                sys.executable,
                "-c",
                _WITHOUT_MAX_CLOSED_STREAMS,
                *("--port", "0", "--warm-storage", str(tmp_path / "warm.bin")),
                *("--log-level", "WARNING"),
            ],
            env=service_env(),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    error = result.stderr.decode()
    assert result.returncode == 1, error
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.startswith("guardrefresh: error: cannot start: "), error
    h2_version = importlib.metadata.version("h2")
    assert f"h2 {h2_version} has no h2.connection.H2Connection.MAX_CLOSED_STREAMS" in error


# ------------------------------------------------------------------ grpclib ---


async def test_wrap_protocol_factory_sees_every_connection() -> None:
    protocols: list[asyncio.Protocol] = []
    async with open_server(Canary(), wrap=recording(protocols)) as (_, port):
        channels = [Channel(port), Channel(port)]
        try:
            for channel in channels:
                assert (await in_thread(channel.unary)).code is OK
        finally:
            for channel in channels:
                channel.close()
    assert len(protocols) == 2
    assert all(isinstance(p, grpclib.protocol.H2Protocol) for p in protocols)


async def test_closing_the_listener_refuses_new_connections_and_keeps_open_ones() -> None:
    async with open_asyncio_loop():
        server = grpclib.server.Server([Canary()])
        assert internals.listener(server) is None
    async with open_server(Canary()) as (server, port):
        listener = internals.listener(server)
        assert isinstance(listener, asyncio.Server)
        first = Channel(port)
        try:
            assert (await in_thread(first.unary)).code is OK
            listener.close()
            assert (await in_thread(first.unary)).code is OK
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        finally:
            first.close()


async def test_forget_closed_connections_lets_their_handlers_go() -> None:
    handlers: list[weakref.ref[grpclib.server.Handler]] = []

    def wrap(protocol: asyncio.Protocol) -> asyncio.Protocol:
        # H2Protocol.handler: grpclib's per-connection Handler (read here only, to watch it).
        handlers.append(weakref.ref(protocol.handler))  # type: ignore[attr-defined]
        return protocol

    async with open_server(Canary(), wrap=wrap) as (server, port):
        for _ in range(3):
            channel = Channel(port)
            assert (await in_thread(channel.unary)).code is OK
            channel.close()
        gc.collect()
        # grpclib itself sweeps closed connections only every ten new ones.
        assert len(handlers) == 3 and all(ref() is not None for ref in handlers)

        def forgotten() -> bool:
            internals.forget_closed_connections(server)
            gc.collect()
            return all(ref() is None for ref in handlers)

        await wait_until(forgotten)


async def test_trailers_sent_turns_true_once_the_status_went_out() -> None:
    seen: list[bool] = []
    canary = Canary()

    async def call(stream: grpclib.server.Stream[Any, Any]) -> None:
        await stream.recv_message()
        seen.append(internals.trailers_sent(stream))
        await stream.send_message(HealthCheckResponse())
        seen.append(internals.trailers_sent(stream))
        await stream.send_trailing_metadata()
        seen.append(internals.trailers_sent(stream))

    canary.on_call = call
    async with open_server(canary) as (_, port):
        channel = Channel(port)
        try:
            assert (await in_thread(channel.unary)).code is OK
        finally:
            channel.close()
    assert seen == [False, False, True]


async def test_call_transport_is_the_connections_own() -> None:
    transports: list[asyncio.BaseTransport] = []
    canary = Canary()

    async def call(stream: grpclib.server.Stream[Any, Any]) -> None:
        transports.append(internals.call_transport(stream))
        await _answer(stream)

    canary.on_call = call
    async with open_server(canary) as (_, port):
        one, other = Channel(port), Channel(port)
        try:
            for channel in (one, one, other):
                assert (await in_thread(channel.unary)).code is OK
        finally:
            one.close()
            other.close()
    assert transports[0] is transports[1]
    assert transports[2] is not transports[0]
    assert all(isinstance(t, asyncio.Transport) for t in transports)
    assert transports[0].get_extra_info("peername")[0] == "127.0.0.1"


async def test_intercepted_reads_see_the_prefix_then_the_body_and_may_refuse() -> None:
    sizes: list[int] = []
    arrived_at_once: list[int] = []
    canary = Canary()

    async def reader(
        read: Callable[[int], Awaitable[bytes]], size: int, arrived: Callable[[int], bool]
    ) -> bytes:
        sizes.append(size)
        if arrived(size):
            arrived_at_once.append(size)
        if size > 1000:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, "too big for the canary")
        return await read(size)

    async def call(stream: grpclib.server.Stream[Any, Any]) -> None:
        internals.intercept_request_reads(stream, reader)
        request = await stream.recv_message()
        await stream.send_message(HealthCheckResponse(status=len(request.service)))

    canary.on_call = call
    async with open_server(canary) as (_, port):
        channel = Channel(port)
        try:
            ok = await in_thread(channel.unary, "abc")
            refused = await in_thread(channel.unary, "x" * 2000)
        finally:
            channel.close()
    assert ok.code is OK and ok.response.status == 3
    body = len(HealthCheckRequest(service="abc").SerializeToString())
    assert sizes[:2] == [5, body]
    assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Once the prefix has been read, the short body of the first call is in as well.
    assert body in arrived_at_once


def test_request_bytes_arrived_tells_whether_a_read_would_wait() -> None:
    acked: list[int] = []
    buffer = grpclib.protocol.Buffer(acked.append)
    assert not internals.request_bytes_arrived(buffer, 1)
    buffer.add(b"abc", 3)
    buffer.add(b"de", 2)
    assert internals.request_bytes_arrived(buffer, 5)
    assert not internals.request_bytes_arrived(buffer, 6)

    async def read(size: int) -> bytes:
        return await buffer.read(size)

    assert asyncio.run(read(4)) == b"abcd"  # both chunks taken, one byte left over
    assert internals.request_bytes_arrived(buffer, 1)
    assert not internals.request_bytes_arrived(buffer, 2)
    buffer.eof()
    # The end of the stream is in: a read returns what there is at once.
    assert internals.request_bytes_arrived(buffer, 100)


async def test_client_streaming_follows_the_methods_cardinality() -> None:
    seen: list[bool] = []
    canary = Canary()

    async def call(stream: grpclib.server.Stream[Any, Any]) -> None:
        seen.append(internals.client_streaming(stream))
        await _answer(stream)

    canary.on_call = call
    async with open_server(canary) as (_, port):
        channel = Channel(port)
        try:
            assert (await in_thread(channel.unary)).code is OK
            assert (await in_thread(channel.stream_in)).code is OK
        finally:
            channel.close()
    assert seen == [False, True]


async def test_the_deadline_wrapper_wraps_each_call_with_a_deadline() -> None:
    made: list[object] = []

    class Counting(grpclib.utils.DeadlineWrapper):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    previous = grpclib.server.DeadlineWrapper
    internals.use_deadline_wrapper(Counting)
    try:
        async with open_server(Canary()) as (_, port):
            channel = Channel(port)
            try:
                assert (await in_thread(channel.unary, "a", 5.0)).code is OK
                assert (await in_thread(channel.unary, "b", None)).code is OK
            finally:
                channel.close()
    finally:
        internals.use_deadline_wrapper(previous)
    assert len(made) == 1


async def test_open_streams_counts_a_call_until_its_status_is_written() -> None:
    protocols: list[asyncio.Protocol] = []
    release = asyncio.Event()
    running = trio.Event()
    canary = Canary()

    async def call(stream: grpclib.server.Stream[Any, Any]) -> None:
        running.set()
        await release.wait()
        await _answer(stream)

    canary.on_call = call
    async with open_server(canary, wrap=recording(protocols)) as (_, port):
        channel = Channel(port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(in_thread, channel.unary)
                await running.wait()
                (protocol,) = protocols
                assert internals.open_streams(protocol) == 1
                release.set()
            await wait_until(lambda: internals.open_streams(protocol) == 0)
        finally:
            channel.close()


def _raw_client(port: int, frame: bytes = b"") -> list[h2.events.Event]:
    """One unary call on a fresh HTTP/2 connection; once it ended, ``frame`` and a PING.
    Returns every event the client saw, up to the PING's ACK or the connection's end."""
    connection = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    message = HealthCheckRequest(service="raw").SerializeToString()
    seen: list[h2.events.Event] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
        connection.initiate_connection()
        stream_id = connection.get_next_available_stream_id()
        connection.send_headers(stream_id, grpc_request_headers(port, UNARY))
        connection.send_data(
            stream_id, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True
        )
        sock.sendall(connection.data_to_send())
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            events = connection.receive_data(data)
            seen.extend(events)
            if any(isinstance(e, h2.events.StreamEnded) for e in events):
                connection.ping(b"canary!!")
                sock.sendall(connection.data_to_send() + frame)
            elif any(isinstance(e, h2.events.PingAckReceived) for e in events):
                break
            sock.sendall(connection.data_to_send())
    return seen


async def test_the_h2_connection_and_flush_reach_the_client() -> None:
    protocols: list[asyncio.Protocol] = []
    canary = Canary()

    async def call(stream: grpclib.server.Stream[Any, Any]) -> None:
        (protocol,) = protocols
        connection = internals.h2_connection(protocol)
        connection.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 7})
        internals.flush(protocol)
        await _answer(stream)

    canary.on_call = call
    async with open_server(canary, wrap=recording(protocols)) as (_, port):
        seen = await trio.to_thread.run_sync(_raw_client, port)
    limits = [
        e.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value
        for e in seen
        if isinstance(e, h2.events.RemoteSettingsChanged)
        and h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS in e.changed_settings
    ]
    assert limits[-1:] == [7], seen


async def test_event_handlers_are_looked_up_per_event_class() -> None:
    protocols: list[asyncio.Protocol] = []
    unknown: list[Any] = []
    canary = Canary()

    async def call(stream: grpclib.server.Stream[Any, Any]) -> None:
        (protocol,) = protocols
        handlers = internals.event_handlers(protocol)
        assert h2.events.RequestReceived in handlers and h2.events.StreamReset in handlers
        assert h2.events.UnknownFrameReceived not in handlers  # what _http2 mends
        handlers[h2.events.UnknownFrameReceived] = lambda event: unknown.append(event.frame)
        await _answer(stream)

    canary.on_call = call
    # An extension frame of type 0xEE on stream 0, after the call.
    extension = hyperframe.frame.ExtensionFrame(type=0xEE, stream_id=0, body=b"canary")
    async with open_server(canary, wrap=recording(protocols)) as (_, port):
        seen = await trio.to_thread.run_sync(_raw_client, port, extension.serialize())
    # The handler put in the dict got the frame, and the connection went on (PING ACK).
    assert [frame.type for frame in unknown] == [0xEE]
    assert isinstance(seen[-1], h2.events.PingAckReceived), seen


# ----------------------------------------------------------------------- h2 ---


def test_unparsed_input_holds_only_an_incomplete_frame() -> None:
    server = H2Connection(config=h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    client = H2Connection(config=h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    assert internals.unparsed_input(server) == bytearray()
    ping = hyperframe.frame.PingFrame(0, opaque_data=b"12345678").serialize()
    server.receive_data(ping[:6])
    assert internals.unparsed_input(server) == bytearray(ping[:6])
    events = server.receive_data(ping[6:])
    assert internals.unparsed_input(server) == bytearray()
    assert any(isinstance(e, h2.events.PingReceived) for e in events)


def test_max_closed_streams_bounds_what_a_new_connection_remembers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(H2Connection, "MAX_CLOSED_STREAMS", 3)
    server = H2Connection(config=h2.config.H2Configuration(client_side=False))
    client = H2Connection(config=h2.config.H2Configuration(client_side=True))
    server.initiate_connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    for _ in range(10):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, grpc_request_headers(1, UNARY), end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(stream_id, [(":status", "200")], end_stream=True)
        client.receive_data(server.data_to_send())
    # A stream is filed as closed when the next event touches it: the bound holds.
    assert len(server._closed_streams) <= 3


# ------------------------------------------------------ trio-asyncio, asyncio ---


async def test_run_one_runs_one_callback_or_raises_would_block() -> None:
    ran: list[str] = []
    probes: list[str] = []

    def probing(run_one: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def run(no_wait: bool = False) -> None:
            await run_one(no_wait=no_wait)
            try:
                await run_one(no_wait=True)
            except trio.WouldBlock:
                probes.append("would block")
            else:
                probes.append("ran one more")

        return run

    async with trio_asyncio.open_loop() as loop:  # unbatched
        internals.wrap_run_one(loop, probing)
        loop.call_soon(ran.append, "x")  # ends the pass that began unwrapped
        await trio.testing.wait_all_tasks_blocked()
        loop.call_soon(ran.append, "a")
        loop.call_soon(ran.append, "b")
        await trio.testing.wait_all_tasks_blocked()
        loop.call_soon(ran.append, "c")
        await trio.testing.wait_all_tasks_blocked()
    assert ran == ["x", "a", "b", "c"]
    assert probes[:2] == ["ran one more", "would block"], probes


async def test_the_timer_heap_holds_pending_timers_and_cancel_calls_the_hook() -> None:
    cancelled: list[asyncio.TimerHandle] = []
    async with open_asyncio_loop() as loop:
        before = len(internals.timer_heap(loop))
        handle = loop.call_later(3600.0, lambda: None)
        await trio.testing.wait_all_tasks_blocked()
        assert handle in internals.timer_heap(loop)
        assert len(internals.timer_heap(loop)) == before + 1
        internals.on_timer_cancelled(loop, cancelled.append)
        handle.cancel()
        assert cancelled == [handle]
        internals.replace_timer_heap(
            loop, [t for t in internals.timer_heap(loop) if t is not handle]
        )
        assert handle not in internals.timer_heap(loop)


class _CountingSocket(socket.socket):
    """A listening socket that notes how many connections each accept burst took."""

    loop: asyncio.AbstractEventLoop
    bursts: list[int]

    def accept(self) -> tuple[socket.socket, Any]:
        accepted = super().accept()  # raises BlockingIOError once the queue is empty
        if not self.bursts or self.bursts[-1] < 0:
            self.bursts.append(0)
            self.loop.call_soon(self._burst_over)
        self.bursts[-1] += 1
        return accepted

    def _burst_over(self) -> None:
        self.bursts.append(-1)


async def test_start_serving_bounds_the_accepts_per_wakeup() -> None:
    connections = 3 * ACCEPTS_PER_WAKEUP + 2
    async with open_asyncio_loop() as loop:  # with the accept guard
        listening = _CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
        listening.loop, listening.bursts = loop, []
        listening.bind(("127.0.0.1", 0))
        listening.listen(200)
        port = listening.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
        try:
            accepted: set[_Closable] = set()
            server = await trio_asyncio_call(
                loop.create_server,
                lambda: _Closable(asyncio.Protocol(), accepted),
                None,
                None,
                sock=listening,
            )
            try:
                await wait_until(lambda: len(accepted) == connections)
            finally:
                server.close()
                for connection in list(accepted):
                    assert connection.transport is not None
                    connection.transport.close()
                await wait_until(lambda: not accepted)
        finally:
            for client in clients:
                client.close()
    bursts = [b for b in listening.bursts if b > 0]
    assert max(bursts) == ACCEPTS_PER_WAKEUP, bursts
    assert len(bursts) >= 4
