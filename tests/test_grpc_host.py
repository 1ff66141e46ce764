"""GrpcHost: grpclib inside Trio with a graceful drain, called by a real grpcio peer.

Real clock throughout: the grpcio client runs in worker threads with its own I/O, and
the mock clock would race ahead of it. Grace periods stay around a second.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import grpclib
import grpclib.protocol
import grpclib.server
import grpclib.utils
import h2.config
import h2.connection
import h2.events
import h2.utilities
import hyperframe.frame
import pytest
import trio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpcio_support import grpc_request_headers, raw_h2_call
from grpclib.const import Status
from grpclib.reflection.v1 import reflection_pb2 as reflection_v1
from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha
from helpers_grpc import (
    DATA_PLANE,
    GET_RULE,
    GET_RULE_STATS,
    NOT_SERVING,
    SERVING,
    Client,
    Results,
    ScriptedDataPlane,
    iter_once,
    open_client,
    open_host,
)
from support.waiting import in_thread, wait_until_async

from guardrefresh.proto import rule_installation as pb
from guardrefresh.server import SHUTDOWN_MESSAGE, DrainReport, GrpcHost, open_asyncio_loop
from guardrefresh.server import _dependency_internals as internals
from guardrefresh.server._call_endings import ExpiredDeadlineWrapper

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
OK = grpc.StatusCode.OK


async def test_serve_reports_port_and_answers_a_grpcio_client() -> None:
    async with open_host() as (host, _), open_client(host.port) as client:
        assert host.port > 0
        outcome = await in_thread(client.get_rule_stats)
        assert outcome.code is OK
        assert outcome.response.total_rules == 7
        # The call leaves the count when its task ends, just after the client has its answer.
        await wait_until_async(lambda: host.in_flight == 0)


async def test_drain_completes_short_calls_and_cancels_long_ones_with_unavailable() -> None:
    results = Results()
    async with open_host() as (host, servicer), open_client(host.port) as client:
        host.set_serving(True)
        async with trio.open_nursery() as nursery:
            results.start(nursery, "short", client.get_rule, "sleep:0.3")
            # A long client deadline: the call must end at the grace period, not here.
            results.start(nursery, "long", client.get_rule, "sleep:30", 20.0)
            await wait_until_async(lambda: host.in_flight == 2)

            reports: list[DrainReport] = []

            async def drain() -> None:
                reports.append(await host.drain(1.0))

            start = trio.current_time()
            nursery.start_soon(drain)
            await wait_until_async(lambda: host.draining)

            # A new RPC on the already-open connection is refused at once.
            rejected = await in_thread(client.get_rule_stats)
            assert rejected.code is UNAVAILABLE
            assert rejected.details == SHUTDOWN_MESSAGE
            assert rejected.elapsed_s < 1.0
            # Health is exempt: it still answers, and says NOT_SERVING.
            health = await in_thread(client.check, "")
            assert health.code is OK and health.response.status == NOT_SERVING
            health = await in_thread(client.check, DATA_PLANE)
            assert health.code is OK and health.response.status == NOT_SERVING
            # The listening socket is closed: new connections are refused.
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", host.port)
        elapsed = trio.current_time() - start

    short, long = results.outcomes["short"], results.outcomes["long"]
    assert short.code is OK and short.response.tier == str(len("sleep:0.3"))
    assert long.code is UNAVAILABLE and long.details == SHUTDOWN_MESSAGE
    assert 0.9 < long.elapsed_s < 5.0  # ended by the 1 s grace, not the 20 s deadline
    assert servicer.finished == ["sleep:0.3"]
    (report,) = reports
    assert (report.in_flight_at_start, report.completed, report.cancelled) == (2, 1, 1)
    assert report.rejected == 1
    assert report.connections_closed == 1
    assert 0.95 <= report.duration_s < 3.0
    assert elapsed < 4.0
    assert host.report == report


async def test_drain_when_idle_does_not_wait_for_the_grace_period() -> None:
    async with open_host() as (host, _), open_client(host.port) as client:
        assert (await in_thread(client.get_rule_stats)).code is OK
        await wait_until_async(lambda: host.in_flight == 0)
        report = await host.drain(30.0)
    assert report.in_flight_at_start == report.completed == report.cancelled == 0
    assert report.connections_closed == 1
    assert report.duration_s < 1.0


async def test_drain_waits_for_calls_that_finish_within_grace() -> None:
    results = Results()
    async with (
        open_host() as (host, _),
        open_client(host.port) as client,
        trio.open_nursery() as nursery,
    ):
        for i in range(3):
            results.start(nursery, f"c{i}", client.get_rule, f"sleep:0.{i + 2}")
        await wait_until_async(lambda: host.in_flight == 3)
        report = await host.drain(5.0)
    assert all(o.code is OK for o in results.outcomes.values())
    assert (report.in_flight_at_start, report.completed, report.cancelled) == (3, 3, 0)
    assert 0.3 < report.duration_s < 1.5  # the longest call (0.4 s), not the 5 s grace


async def test_skip_grace_cuts_the_wait_short() -> None:
    results = Results()
    async with (
        open_host() as (host, _),
        open_client(host.port) as client,
        trio.open_nursery() as nursery,
    ):
        results.start(nursery, "long", client.get_rule, "sleep:30", 20.0)
        await wait_until_async(lambda: host.in_flight == 1)
        reports: list[DrainReport] = []

        async def drain() -> None:
            reports.append(await host.drain(30.0))

        nursery.start_soon(drain)
        await wait_until_async(lambda: host.draining)
        await trio.sleep(0.2)
        assert not reports
        skipped_at = trio.current_time()
        host.skip_grace()
        await wait_until_async(lambda: bool(reports))
        after_skip = trio.current_time() - skipped_at
    assert after_skip < 1.0
    (report,) = reports
    assert (report.in_flight_at_start, report.completed, report.cancelled) == (1, 0, 1)
    assert report.duration_s < 2.0
    assert results.outcomes["long"].code is UNAVAILABLE
    assert results.outcomes["long"].elapsed_s < 3.0


async def test_health_watch_sees_serving_then_not_serving_during_drain() -> None:
    seen: list[int] = []
    results = Results()
    async with open_host() as (host, _), open_client(host.port) as client:
        assert (await in_thread(client.check)).response.status == NOT_SERVING
        async with trio.open_nursery() as nursery:
            results.start(nursery, "watch", client.watch, seen, DATA_PLANE)
            await wait_until_async(lambda: seen == [NOT_SERVING])
            host.set_serving(True)
            await wait_until_async(lambda: seen == [NOT_SERVING, SERVING])
            assert (await in_thread(client.check)).response.status == SERVING
            # Watch streams are not in flight: an otherwise idle drain ends at once.
            assert host.in_flight == 0
            report = await host.drain(5.0)
            host.set_serving(True)  # ignored while (and after) draining
    assert seen == [NOT_SERVING, SERVING, NOT_SERVING]
    watch = results.outcomes["watch"]
    assert watch.code is UNAVAILABLE and watch.details == SHUTDOWN_MESSAGE
    assert report.in_flight_at_start == 0
    assert report.duration_s < 1.5


async def test_cancelling_serve_without_drain_forces_a_clean_shutdown() -> None:
    results = Results()
    serve_saw_cancelled = []

    async def serve_then_cancel() -> DrainReport | None:
        # The host lives only in here, so the gc.collect() below can find what it leaks.
        host = GrpcHost([ScriptedDataPlane()])

        async def serve(task_status: trio.TaskStatus[int]) -> None:
            try:
                await host.serve(task_status=task_status)
            except trio.Cancelled:
                serve_saw_cancelled.append(True)
                raise

        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve)
            client = await trio.to_thread.run_sync(Client, port)
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            results.start(nursery, "long", client.get_rule, "sleep:30", 20.0)
            await wait_until_async(lambda: host.in_flight == 1)
            cancelled_at = trio.current_time()
            nursery.cancel_scope.cancel()
        # Forced: the client got UNAVAILABLE right away, not at its deadline.
        assert results.outcomes["long"].code is UNAVAILABLE
        assert results.outcomes["long"].details == SHUTDOWN_MESSAGE
        assert results.outcomes["long"].elapsed_s < 3.0
        # The server closed the raw connection too: it reads to EOF.
        with trio.fail_after(2):
            while await raw.receive_some():
                pass
        await raw.aclose()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        assert trio.current_time() - cancelled_at < 3.0
        await trio.to_thread.run_sync(client.close)
        return host.report

    async with open_asyncio_loop():
        report = await serve_then_cancel()
    # Anything left unclosed warns when collected, and filterwarnings=error fails the test.
    gc.collect()
    assert serve_saw_cancelled == [True]
    assert report is not None
    assert (report.in_flight_at_start, report.cancelled, report.connections_closed) == (1, 1, 2)
    assert report.duration_s < 2.0


async def test_a_handler_that_swallows_cancellation_cannot_hold_the_drain() -> None:
    results = Results()
    async with (
        open_host() as (host, servicer),
        open_client(host.port) as client,
        trio.open_nursery() as nursery,
    ):
        results.start(nursery, "stubborn", client.get_rule, "stubborn:30", 20.0)
        await wait_until_async(lambda: host.in_flight == 1)
        report = await host.drain(0.2)
    # Grace, then the bounded wait for cancelled handlers, then the connection closes
    # (which cancels the handler again): the client sees the connection go.
    assert results.outcomes["stubborn"].code is UNAVAILABLE
    assert results.outcomes["stubborn"].elapsed_s < 4.0
    assert (report.in_flight_at_start, report.cancelled, report.connections_closed) == (1, 1, 1)
    assert 1.1 < report.duration_s < 3.0
    assert servicer.finished == []


@pytest.fixture
async def server_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for a fresh self-signed 127.0.0.1 certificate, and its path."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    await trio.run_process(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_stdout=True,
        capture_stderr=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


async def test_serves_over_tls(server_tls: tuple[ssl.SSLContext, Path]) -> None:
    context, cert = server_tls
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    async with (
        open_host(ssl=context) as (host, _),
        open_client(host.port, credentials) as client,
    ):
        outcome = await in_thread(client.get_rule_stats)
        assert outcome.code is OK and outcome.response.total_rules == 7
        async with open_client(host.port) as plaintext:
            assert (await in_thread(plaintext.get_rule_stats, 2.0)).code is UNAVAILABLE
        await wait_until_async(lambda: host.in_flight == 0)
        report = await host.drain(1.0)
    assert report.connections_closed >= 1


async def test_oversized_request_is_refused_with_resource_exhausted() -> None:
    limit = 64 * 1024
    async with (
        open_host(max_message_bytes=limit) as (host, servicer),
        open_client(host.port) as client,
    ):
        big = await in_thread(client.get_rule, "x" * (limit + 1))
        assert big.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(limit) in big.details
        # Just under the limit: the message is the id plus 4 bytes of tag and length.
        fits = await in_thread(client.get_rule, "y" * (limit - 8))
        assert fits.code is OK and fits.response.tier == str(limit - 8)
        assert (await in_thread(client.get_rule_stats)).code is OK
        assert servicer.finished == ["y" * (limit - 8)]
        await wait_until_async(lambda: host.in_flight == 0)


@contextlib.contextmanager
def cyclic_gc_disabled() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def live(cls: type) -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, cls))


async def test_a_finished_call_is_freed_without_the_cyclic_gc() -> None:
    """Each call's streams, buffers and queues go when it ends, as on plain grpclib.

    A reference cycle through a call's stream would keep all of it until the next
    collection: memory that plain asyncio reuses at once (still cache-warm) and
    collections it never makes.
    """
    calls = 40
    async with open_host(max_message_bytes=1 << 20) as (host, _), open_client(host.port) as client:
        assert (await in_thread(client.get_rule, "warm-up")).code is OK
        with cyclic_gc_disabled():
            for i in range(calls):
                # With a deadline: the call also gets a deadline wrapper and its timer.
                assert (await in_thread(client.get_rule, f"r{i}", 30.0)).code is OK
            await wait_until_async(lambda: host.in_flight == 0)
            assert live(grpclib.server.Stream) == 0
            # grpclib's Handler forgets finished calls' HTTP/2 streams (and the deadline
            # wrapper each holds) every tenth call.
            forgets_every = grpclib.server.Handler.__gc_interval__
            assert live(grpclib.protocol.Stream) <= forgets_every
            assert live(ExpiredDeadlineWrapper) <= forgets_every


@pytest.mark.parametrize("remembered", [8, None], ids=["limit-8", "default"])
async def test_a_connection_remembers_only_its_latest_closed_streams(
    remembered: int | None,
) -> None:
    """h2 alone would remember 2**16 ended streams per connection (12-15 MB).

    The host sets h2's public ``H2Connection.MAX_CLOSED_STREAMS``; this reads h2's
    private record of closed streams to see that the bound holds.
    """
    calls = 30
    kwargs = {} if remembered is None else {"closed_streams_remembered": remembered}
    async with open_host(**kwargs) as (host, _), open_client(host.port) as client:
        for i in range(calls):
            assert (await in_thread(client.get_rule, f"r{i}")).code is OK
        await wait_until_async(lambda: host.in_flight == 0)
        (connection,) = host._connections
        closed = len(internals.h2_connection(connection.h2_protocol)._closed_streams)
        if remembered is not None:
            assert closed == remembered
        else:
            # h2 files a stream as closed when the next one opens: the last may not be yet.
            assert calls - 1 <= closed <= calls


def _frames_for_forgotten_streams_then_a_call(port: int, calls: int) -> list[str]:
    """``calls`` GetRule calls on one raw HTTP/2 connection, then late frames for the
    first call's stream (a DATA, a WINDOW_UPDATE, a RST_STREAM), then one more call.
    Returns the grpc-status of each call and the error code of any RST_STREAM seen.
    """
    connection = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    seen: list[str] = []
    message = bytes(pb.GetRuleRequest(rule_id="late"))
    body = b"\x00" + len(message).to_bytes(4, "big") + message

    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
        connection.initiate_connection()

        def call() -> int:
            stream_id = connection.get_next_available_stream_id()
            connection.send_headers(stream_id, grpc_request_headers(port, GET_RULE))
            connection.send_data(stream_id, body, end_stream=True)
            sock.sendall(connection.data_to_send())
            answered = len(seen) + 1
            while len(seen) < answered:
                data = sock.recv(65536)
                if not data:
                    pytest.fail(f"the server closed the connection; seen so far: {seen}")
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                        status = dict(event.headers or ()).get("grpc-status")
                        if status is not None:
                            seen.append(f"status {status}")
                    elif isinstance(event, h2.events.StreamReset):
                        seen.append(f"reset {event.error_code.name}")
                sock.sendall(connection.data_to_send())
            return stream_id

        first = call()
        for _ in range(calls - 1):
            call()
        # h2 would refuse to send on a closed stream: these frames are written raw.
        late = hyperframe.frame.DataFrame(first, data=b"late")
        window = hyperframe.frame.WindowUpdateFrame(first, window_increment=1024)
        reset = hyperframe.frame.RstStreamFrame(first, error_code=8)  # CANCEL
        sock.sendall(late.serialize() + window.serialize() + reset.serialize())
        call()
    return seen


async def test_a_unary_request_without_its_message_is_invalid_argument() -> None:
    async with open_host() as (host, _):
        answer = await in_thread(raw_h2_call, host.port, GET_RULE, None)
        await wait_until_async(lambda: host.in_flight == 0)
    assert answer["grpc-status"] == str(Status.INVALID_ARGUMENT.value), answer
    assert answer["grpc-message"] == "the request ended without a message"


async def test_frames_for_a_forgotten_stream_leave_the_connection_serving() -> None:
    async with open_host(closed_streams_remembered=2) as (host, _):
        seen = await trio.to_thread.run_sync(
            _frames_for_forgotten_streams_then_a_call, host.port, 5
        )
        await wait_until_async(lambda: host.in_flight == 0)
    # The server had forgotten the first stream (it remembers two): its late frames
    # cost at most a RST_STREAM for that stream (which h2's client drops, as the
    # stream is closed on its side), and the next call on the same connection is
    # answered as usual.
    assert seen == ["status 0"] * 6


async def test_handler_exception_answers_unknown_and_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_host() as (host, _), open_client(host.port) as client:
        with caplog.at_level(logging.ERROR, logger="grpclib.server"):
            boom = await in_thread(client.get_rule, "boom")
        assert boom.code is grpc.StatusCode.UNKNOWN
        assert any(
            r.exc_info and "unexpected failure" in str(r.exc_info[1]) for r in caplog.records
        )
        assert (await in_thread(client.get_rule, "fine")).code is OK
        await wait_until_async(lambda: host.in_flight == 0)
        report = await host.drain(1.0)
    assert report.in_flight_at_start == 0


@pytest.mark.parametrize("version", [reflection_v1alpha, reflection_v1], ids=["v1alpha", "v1"])
async def test_reflection_lists_and_describes_the_data_plane(version: object) -> None:
    module = version
    path = (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        if module is reflection_v1alpha
        else "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    )
    request_type = module.ServerReflectionRequest  # type: ignore[attr-defined]
    response_type = module.ServerReflectionResponse  # type: ignore[attr-defined]
    async with open_host() as (host, _), open_client(host.port) as client:
        call = client.stream_stream(path, request_type.SerializeToString, response_type.FromString)

        def ask(request: object) -> object:
            (response,) = list(call(iter_once(request), timeout=5.0))
            return response

        listed = await trio.to_thread.run_sync(ask, request_type(list_services=""))
        described = await trio.to_thread.run_sync(
            ask, request_type(file_containing_symbol=DATA_PLANE)
        )
        # Reflection is exempt from the drain's counting.
        assert host.in_flight == 0

    names = [s.name for s in listed.list_services_response.service]  # type: ignore[attr-defined]
    assert DATA_PLANE in names
    files = described.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
    pool = descriptor_pool.DescriptorPool()
    for raw in files:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
    service = pool.FindServiceByName(DATA_PLANE)
    assert {"GetRuleStats", "GetRule", "RefreshRules"} <= set(service.methods_by_name)
    assert service.methods_by_name["GetRule"].input_type.full_name == (
        "rule_installation.GetRuleRequest"
    )


async def test_reflection_can_be_switched_off() -> None:
    path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    request_type = reflection_v1alpha.ServerReflectionRequest
    response_type = reflection_v1alpha.ServerReflectionResponse
    async with open_host(reflection=False) as (host, _), open_client(host.port) as client:
        call = client.stream_stream(path, request_type.SerializeToString, response_type.FromString)

        def ask() -> grpc.StatusCode:
            try:
                list(call(iter_once(request_type(list_services="")), timeout=5.0))
            except grpc.RpcError as err:
                return err.code()
            return OK

        assert await trio.to_thread.run_sync(ask) is grpc.StatusCode.UNIMPLEMENTED


async def test_misuse_is_refused() -> None:
    host = GrpcHost([ScriptedDataPlane()])
    with pytest.raises(RuntimeError, match="not listening"):
        host.port  # noqa: B018
    with pytest.raises(RuntimeError, match=r"before GrpcHost\.serve"):
        await host.drain(1.0)
    with pytest.raises(RuntimeError, match=r"trio_asyncio\.open_loop"):
        await host.serve()
    with pytest.raises(RuntimeError, match="only once"):
        await host.serve()
    with pytest.raises(ValueError, match="at least one service"):
        GrpcHost([])
    with pytest.raises(ValueError, match="max_message_bytes"):
        GrpcHost([ScriptedDataPlane()], max_message_bytes=4)
    with pytest.raises(ValueError, match="closed_streams_remembered must be >= 1, got 0"):
        GrpcHost([ScriptedDataPlane()], closed_streams_remembered=0)
    with pytest.raises(ValueError, match="completed"):
        DrainReport(
            in_flight_at_start=2,
            completed=1,
            cancelled=0,
            rejected=0,
            connections_closed=0,
            duration_s=0.0,
        )
    with pytest.raises(ValueError, match="duration_s"):
        DrainReport(
            in_flight_at_start=0,
            completed=0,
            cancelled=0,
            rejected=0,
            connections_closed=0,
            duration_s=-1.0,
        )


async def test_bind_failure_propagates_before_ready() -> None:
    async with open_host() as (first, _):
        second = GrpcHost([ScriptedDataPlane()], port=first.port)
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError):
                await nursery.start(second.serve)
        assert second.report is None


# ------------------------------------------------------------ on_call_done ---


async def test_on_call_done_reports_each_finished_call_once_with_its_final_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[tuple[str, Status, float]] = []
    results = Results()
    health_check = "/grpc.health.v1.Health/Check"
    async with (
        open_host(on_call_done=lambda *call: done.append(call)) as (host, _),
        open_client(host.port) as client,
    ):
        assert (await in_thread(client.get_rule_stats)).code is OK
        assert (await in_thread(client.get_rule, "sleep:0.2")).code is OK
        assert (await in_thread(client.check, "")).code is OK  # exempt, still reported
        with caplog.at_level(logging.CRITICAL, logger="grpclib.server"):
            assert (await in_thread(client.get_rule, "boom")).code is grpc.StatusCode.UNKNOWN

        # The client gives up on a running call: the stream is reset, no trailers go out.
        get_rule = client.channel.unary_unary(
            GET_RULE, request_serializer=bytes, response_deserializer=pb.GetRuleResponse.parse
        )
        future = await trio.to_thread.run_sync(
            lambda: get_rule.future(pb.GetRuleRequest(rule_id="sleep:30"), timeout=20.0)
        )
        await wait_until_async(lambda: host.in_flight == 1)
        await trio.sleep(0.2)
        await trio.to_thread.run_sync(future.cancel)
        await wait_until_async(lambda: len(done) == 5 and host.in_flight == 0)

        # A drain: the running call is cancelled with UNAVAILABLE, a new one is rejected.
        async with trio.open_nursery() as nursery:
            results.start(nursery, "long", client.get_rule, "sleep:30", 20.0)
            await wait_until_async(lambda: host.in_flight == 1)
            nursery.start_soon(host.drain, 0.5)
            await wait_until_async(lambda: host.draining)
            assert (await in_thread(client.get_rule_stats)).code is UNAVAILABLE
    assert results.outcomes["long"].code is UNAVAILABLE

    assert [(method, status) for method, status, _ in done] == [
        (GET_RULE_STATS, Status.OK),
        (GET_RULE, Status.OK),
        (health_check, Status.OK),
        (GET_RULE, Status.UNKNOWN),
        (GET_RULE, Status.CANCELLED),
        (GET_RULE_STATS, Status.UNAVAILABLE),  # rejected at once, while the long one runs
        (GET_RULE, Status.UNAVAILABLE),
    ]
    seconds = [elapsed for _, _, elapsed in done]
    assert all(0 <= s < 5.0 for s in seconds)
    assert seconds[1] >= 0.19  # the sleep:0.2 call
    assert seconds[4] >= 0.19  # cancelled 0.2 s after it was seen in flight
    assert seconds[6] >= 0.45  # ended by the 0.5 s grace
    assert seconds[5] < seconds[6]


async def test_on_call_done_that_raises_is_logged_and_the_call_still_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(method: str, status: Status, seconds: float) -> None:
        raise RuntimeError("metrics are broken")

    async with (
        open_host(on_call_done=broken) as (host, _),
        open_client(host.port) as client,
    ):
        with caplog.at_level(logging.ERROR, logger="guardrefresh.server._calls"):
            assert (await in_thread(client.get_rule_stats)).code is OK
            assert (await in_thread(client.get_rule_stats)).code is OK
            await wait_until_async(lambda: host.in_flight == 0)
            await wait_until_async(lambda: len(caplog.records) == 2)
    assert all(
        r.exc_info and "metrics are broken" in str(r.exc_info[1]) and GET_RULE_STATS in r.message
        for r in caplog.records
    )


# ------------------------------------------------------------------ deadlines ---


async def test_calls_past_their_deadline_end_deadline_exceeded_without_error_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both ways a call can outlive its deadline end as DEADLINE_EXCEEDED, logged at INFO.

    Unmended grpclib answers the first with UNKNOWN and an ERROR traceback ("Timeout
    occurred") and logs the second as ERROR "Failed to handle cancellation".
    """
    async with open_host() as (host, servicer), open_client(host.port) as client:
        with caplog.at_level(logging.INFO, logger="grpclib.server"):
            # 1. Expired on arrival: a grpc-timeout of one nanosecond has always passed by
            #    the time the handler would start (grpcio cannot be made to send this).
            for path in (GET_RULE_STATS, GET_RULE):
                answer = await trio.to_thread.run_sync(
                    raw_h2_call, host.port, path, b"", [("grpc-timeout", "1n")]
                )
                assert answer.get("grpc-status") == str(Status.DEADLINE_EXCEEDED.value), answer
            # 2. A handler that swallows the deadline's cancellation and finishes anyway
            #    (the raw client waits for the server's answer instead of resetting).
            request = bytes(pb.GetRuleRequest(rule_id="stubborn:0.3"))
            answer = await trio.to_thread.run_sync(
                raw_h2_call, host.port, GET_RULE, request, [("grpc-timeout", "100m")]
            )
            assert answer.get("grpc-status") == str(Status.DEADLINE_EXCEEDED.value), answer
            await wait_until_async(lambda: host.in_flight == 0)
        assert servicer.finished == ["stubborn:0.3"]
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert errors == []
        deadline_records = [r for r in caplog.records if r.getMessage() == "Deadline exceeded"]
        assert len(deadline_records) == 3, [r.getMessage() for r in caplog.records]
        assert (await in_thread(client.get_rule_stats)).code is OK


# ----------------------------------------------------------- connection close ---


def _client_sending_through_the_drain(port: int, *, limit_s: float = 10.0) -> list[str]:
    """A raw HTTP/2 client whose request body is still arriving when the drain ends it.

    It declares a 1 MB GetRule message and sends only its start, so the handler is
    in flight. Once the server has answered, it sends more body bytes for 0.2 s, as
    a client would whose data is already on its way, and then reads to the end.
    Returns what it saw, in order: ``status N``, then ``eof`` (a clean close) or
    ``reset`` (the kernel answered with RST, which makes a real client drop the
    status it has not read yet).
    """
    connection = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    seen: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        connection.initiate_connection()
        stream_id = connection.get_next_available_stream_id()
        connection.send_headers(stream_id, grpc_request_headers(port, GET_RULE))
        connection.send_data(stream_id, b"\x00" + (1 << 20).to_bytes(4, "big") + bytes(100))
        sock.sendall(connection.data_to_send())
        try:
            while not seen:
                data = sock.recv(65536)
                if not data:
                    pytest.fail("the server closed before answering the call")
                for event in connection.receive_data(data):
                    # A call that ends before replying gets one HEADERS frame
                    # ("trailers-only"): h2 reports it as the response.
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        headers = dict(event.headers or ())
                        if "grpc-status" in headers:
                            seen.append(f"status {headers['grpc-status']}")
                sock.sendall(connection.data_to_send())
            # h2 would refuse to send on the ended stream: these frames are written raw.
            late_data = hyperframe.frame.DataFrame(stream_id, data=bytes(1000)).serialize()
            for _ in range(10):
                sock.sendall(late_data)
                time.sleep(0.02)
            while sock.recv(65536):
                pass
            seen.append("eof")
        except (ConnectionResetError, BrokenPipeError):
            seen.append("reset")
    return seen


async def test_drain_closes_connections_so_a_client_still_sending_reads_its_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guardrefresh.server")
    async with open_host() as (host, _), trio.open_nursery() as nursery:
        seen: list[list[str]] = []

        async def client() -> None:
            seen.append(await trio.to_thread.run_sync(_client_sending_through_the_drain, host.port))

        nursery.start_soon(client)
        await wait_until_async(lambda: host.in_flight == 1)
        report = await host.drain(0.0)
    # The server half-closed after the status and read (and dropped) what the client
    # still sent, instead of answering it with RST.
    assert seen == [["status 14", "eof"]]
    assert (report.cancelled, report.connections_closed) == (1, 1)
    # The client closed its side on its own: the drain did not wait out its bound.
    assert not any("did not close their side" in r.getMessage() for r in caplog.records)


async def test_drain_closes_a_connection_whose_client_never_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guardrefresh.server")
    async with open_host() as (host, _):
        with socket.create_connection(("127.0.0.1", host.port)) as sock:
            connection = h2.connection.H2Connection(
                config=h2.config.H2Configuration(client_side=True)
            )
            connection.initiate_connection()
            sock.sendall(connection.data_to_send())
            await wait_until_async(lambda: host.open_connections == 1)
            report = await host.drain(0.0)

            # The wait for the client to close its side, then a plain close.
            assert report.connections_closed == 1
            assert 0.9 < report.duration_s < 1.9
            assert host.open_connections == 0
            assert sum("did not close their side" in r.getMessage() for r in caplog.records) == 1
            sock.settimeout(5.0)
            received = b""
            while chunk := await trio.to_thread.run_sync(sock.recv, 65536):
                received += chunk
            # What the server sent (its settings) is all there, then a clean EOF.
            assert any(
                isinstance(event, h2.events.RemoteSettingsChanged)
                for event in connection.receive_data(received)
            )


async def test_drain_aborts_a_tls_connection_whose_client_never_answers_close_notify(
    server_tls: tuple[ssl.SSLContext, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrefresh.server")
    context, cert = server_tls
    client_context = ssl.create_default_context(cafile=cert)
    async with open_host(ssl=context) as (host, _):
        raw = socket.create_connection(("127.0.0.1", host.port))
        # The handshake needs the server, whose loop is this thread's: do it elsewhere.
        handshake = partial(client_context.wrap_socket, raw, server_hostname="127.0.0.1")
        with await trio.to_thread.run_sync(handshake) as sock:
            connection = h2.connection.H2Connection(
                config=h2.config.H2Configuration(client_side=True)
            )
            connection.initiate_connection()
            await trio.to_thread.run_sync(sock.sendall, connection.data_to_send())
            await wait_until_async(lambda: host.open_connections == 1)
            # The client reads nothing from here on, so the server's close_notify
            # stays unanswered: the drain's bounded steps must still end the connection.
            report = await host.drain(0.0)

            assert report.connections_closed == 1
            assert host.open_connections == 0
            # Mostly the full path (linger, close wait, abort: about 2 s); sometimes the
            # TLS shutdown ends sooner on its own. Either way the connection is gone.
            assert report.duration_s < 3.5
            aborted = sum("aborting them" in r.getMessage() for r in caplog.records)
            assert aborted == (1 if report.duration_s > 1.9 else 0)
            sock.settimeout(5.0)
            with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                while await trio.to_thread.run_sync(sock.recv, 65536):
                    pass  # the server's settings and close_notify, then its socket closes


async def test_a_client_that_reset_its_connection_does_not_break_the_drain() -> None:
    async with open_host() as (host, _):
        sock = socket.create_connection(("127.0.0.1", host.port))
        await wait_until_async(lambda: host.open_connections == 1)
        # SO_LINGER 0: close() sends RST. The drain starts at once, mostly before
        # the server has read the reset, so it closes a socket that is gone already.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        report = await host.drain(0.0)
    assert report.connections_closed in (0, 1)
    assert host.open_connections == 0
