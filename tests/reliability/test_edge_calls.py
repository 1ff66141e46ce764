"""Hostile calls against the real service: the edge bounds what they can cost.

Each test starts ``python -m guardrefresh`` and attacks it over loopback with a raw
HTTP/2 client (:class:`~.h2_client.RawH2Client`: what grpcio will not send) or a
flooding grpclib client, while grpcio, the reference client, checks that everyone else
is still served:

- the advertised stream limit, and a client that goes beyond it;
- stalled request bodies beyond the pending-bytes budget;
- the receive deadline of a request;
- the process's memory after a stall attack;
- a connection that floods next to one that sends a call at a time;
- a shed connection is told to open one stream at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections import Counter
from pathlib import Path

import grpc
from grpcio_support import HOST, DataPlaneClient
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from support.service import free_port, running_service
from support.waiting import wait_until

from guardrefresh.proto import rule_installation as pb

from .h2_client import RawH2Client
from .service import metric, scrape_metrics

GET_RULE = "/rule_installation.DataPlane/GetRule"
GET_RULE_STATS = "/rule_installation.DataPlane/GetRuleStats"
OK = "0"
DEADLINE_EXCEEDED = "4"
RESOURCE_EXHAUSTED = "8"
MIB = 1024 * 1024


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def rule_request(rule_id: str, *, padding: int = 0) -> bytes:
    """A serialized GetRuleRequest (field 1, the id), with ``padding`` bytes in an
    unknown field (15), which the server skips: a large request with a short id."""
    encoded = rule_id.encode()
    message = b"\x0a" + _varint(len(encoded)) + encoded
    if padding:
        message += b"\x7a" + _varint(padding) + bytes(padding)
    return message


def test_the_stream_limit_is_advertised_and_a_client_beyond_it_loses_its_connection(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    with running_service(tmp_path, "--max-concurrent-streams", "5") as service:
        with RawH2Client(service.port) as client:
            client.pump(5.0, until=lambda: client.max_concurrent_streams == 5)
            assert client.max_concurrent_streams == 5
            # Five calls that send their headers and nothing more stay open.
            for _ in range(5):
                client.start_call(GET_RULE)
            client.pump(1.0)
            assert not client.closed and not client.statuses and not client.resets
            # The sixth breaks the protocol: the server ends this client's connection.
            client.start_call_beyond_the_limit(GET_RULE)
            client.pump(5.0, until=lambda: client.closed)
            assert client.closed
        with DataPlaneClient(grpcio_modules, service.port) as other:
            assert other.stats().total_rules == 0


def test_stalled_bodies_beyond_the_budget_are_refused_while_small_calls_work(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    with running_service(
        tmp_path,
        "--max-pending-request-bytes",
        str(8 * MIB),
        "--max-message-bytes",
        str(8 * MIB),
    ) as service:
        with RawH2Client(service.port) as attacker:
            attacker.pump(2.0, until=lambda: attacker.max_concurrent_streams is not None)
            assert attacker.max_concurrent_streams == 100  # the default, advertised
            # Two bodies declared at 3.9 MB, 1 MB of each sent, then nothing: 7.8 of 8 MiB.
            stalled = [
                attacker.start_call(GET_RULE, declared=3_900_000, send=1_000_000) for _ in range(2)
            ]
            attacker.pump(3.0)
            third = attacker.start_call(GET_RULE, declared=3_900_000, send=1000)
            attacker.pump(10.0, until=lambda: third in attacker.statuses)
            assert attacker.statuses.get(third) == RESOURCE_EXHAUSTED
            # Another client's small calls still fit, and are answered.
            with DataPlaneClient(grpcio_modules, service.port) as other:
                assert other.stats().total_rules == 0
                small = other.raw("GetRule", rule_request("no-such-rule"))
                assert small.code is grpc.StatusCode.NOT_FOUND
            attacker.pump(0.5)
            assert not any(stream in attacker.statuses for stream in stalled)
        # The attacker has gone: its reservations came back, a large body fits again.
        with RawH2Client(service.port) as again:
            big = again.start_call(GET_RULE, message=rule_request("r", padding=7 * MIB))
            again.pump(20.0, until=lambda: big in again.statuses)
            assert again.statuses.get(big) == "5"  # NOT_FOUND: read whole and answered
        assert service.returncode is None


def test_a_request_that_does_not_arrive_in_time_ends_deadline_exceeded_and_is_reset(
    tmp_path: Path,
) -> None:
    with (
        running_service(tmp_path, "--request-timeout", "1") as service,
        RawH2Client(service.port) as client,
    ):
        started = time.monotonic()
        header_only = client.start_call(GET_RULE)
        partial = client.start_call(GET_RULE, declared=1000, send=10)
        client.pump(10.0, until=lambda: {header_only, partial} <= client.statuses.keys())
        elapsed = time.monotonic() - started
        assert client.statuses.get(header_only) == DEADLINE_EXCEEDED
        assert client.statuses.get(partial) == DEADLINE_EXCEEDED
        assert elapsed >= 0.9  # the request timeout, not an immediate refusal
        client.pump(2.0, until=lambda: {header_only, partial} <= client.resets.keys())
        assert {header_only, partial} <= client.resets.keys()
        # The connection itself is fine: a whole call on it is answered.
        whole = client.start_call(GET_RULE_STATS, message=b"")
        client.pump(5.0, until=lambda: whole in client.statuses)
        assert client.statuses.get(whole) == OK


def test_memory_returns_after_a_stall_attack(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    """400 streams that send only headers and 100 bodies stalled at 3.9 MB of 4 MB.

    The default budget (64 MiB) admits 16 of the bodies; the others are refused at their
    length prefix. The header-only streams wait as headers, not as calls. Once the
    clients leave, the process is back within 20 % of its size before the attack.
    """
    with (
        running_service(tmp_path, metrics_port=free_port()) as service,
        DataPlaneClient(grpcio_modules, service.port) as client,
    ):
        for _ in range(50):
            client.stats()
        time.sleep(1.0)
        before = service.rss_kib()
        idle: list[RawH2Client] = []
        stalling: list[RawH2Client] = []
        try:
            for _ in range(4):
                attacker = RawH2Client(service.port)
                idle.append(attacker)
                for _ in range(100):
                    attacker.start_call(GET_RULE)
            for _ in range(10):
                attacker = RawH2Client(service.port)
                stalling.append(attacker)
                for _ in range(10):
                    attacker.start_call(GET_RULE, declared=4_000_000, send=3_900_000)
            refused = 100 - 16

            def answered() -> int:
                return sum(len(a.statuses) for a in stalling)

            # A body can be sent whole before its refusal arrives: wait for both.
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline and (
                any(a.sending for a in stalling) or answered() < refused
            ):
                for attacker in idle + stalling:
                    attacker.pump(0.0)
            statuses = Counter(s for a in stalling for s in a.statuses.values())
            assert statuses == {RESOURCE_EXHAUSTED: refused}, statuses
            during = service.rss_kib()
            # Held: 16 bodies (62 MB) and 400 idle streams, not 390 MB of bodies.
            assert during - before < 150 * 1024, (before, during)
            assert service.metrics_port is not None
            samples = scrape_metrics(service.metrics_port)
            assert metric(samples, "guardrefresh_requests_awaiting_body") == 400
            assert client.stats().total_rules == 0
        finally:
            for attacker in idle + stalling:
                attacker.close()
        wait_until(
            lambda: service.rss_kib() <= 1.2 * before,
            timeout=30.0,
            what=f"RSS back within 20 % of {before} KiB (now {service.rss_kib()} KiB)",
        )
        assert client.stats().total_rules == 0


def _flood(port: int, streams: int, stop: threading.Event, seen: Counter[str]) -> None:
    """One grpclib connection keeping ``streams`` GetRuleStats calls going until ``stop``."""

    async def main() -> None:
        channel = Channel(HOST, port)
        stub = pb.DataPlaneStub(channel)

        async def worker() -> None:
            while not stop.is_set():
                try:
                    await stub.get_rule_stats(pb.GetRuleStatsRequest(), timeout=20.0)
                    seen["OK"] += 1
                except GRPCError as exc:
                    seen[exc.status.name] += 1
                except TimeoutError:  # waiting for a stream the server no longer allows
                    seen["DEADLINE"] += 1

        try:
            await asyncio.gather(*(worker() for _ in range(streams)))
        finally:
            channel.close()

    asyncio.run(main())


def test_a_flooding_connection_is_shed_and_cannot_starve_a_polite_one(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    with running_service(
        tmp_path, "--max-concurrent-rpcs", "2", "--max-queued-rpcs", "4"
    ) as service:
        seen: Counter[str] = Counter()
        stop = threading.Event()
        flooder = threading.Thread(target=_flood, args=(service.port, 100, stop, seen))
        flooder.start()
        try:
            wait_until(lambda: seen["RESOURCE_EXHAUSTED"] > 0, timeout=30.0, what="shedding")
            with DataPlaneClient(grpcio_modules, service.port, own_connection=True) as polite:
                outcomes = [
                    polite.outcome("GetRuleStats", polite.pb2.GetRuleStatsRequest())
                    for _ in range(20)
                ]
                assert [o.code for o in outcomes] == [grpc.StatusCode.OK] * 20
                assert polite.health_responds(5.0)
            # The shed connection may open one stream at a time now: its calls still
            # go through, one by one.
            served_before = seen["OK"]
            wait_until(lambda: seen["OK"] > served_before, timeout=20.0, what="the flooder served")
        finally:
            stop.set()
            flooder.join(60.0)
        assert not flooder.is_alive()
        assert set(seen) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE"}, seen


def test_a_shed_connection_is_told_to_open_one_stream_at_a_time(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    """20 calls at once on one connection, with 1 run slot and 1 queue place: the
    calls beyond are refused, and the connection gets SETTINGS_MAX_CONCURRENT_STREAMS 1;
    a fresh client is still served."""
    with running_service(
        tmp_path, "--max-concurrent-rpcs", "1", "--max-queued-rpcs", "1"
    ) as service:
        with RawH2Client(service.port) as client:
            client.pump(5.0, until=lambda: client.max_concurrent_streams is not None)
            assert client.max_concurrent_streams == 100
            for _ in range(20):
                client.start_call(GET_RULE_STATS, message=b"")
            client.pump(10.0, until=lambda: len(client.statuses) == 20)
            statuses = Counter(client.statuses.values())
            assert statuses[RESOURCE_EXHAUSTED] >= 1 and statuses[OK] >= 1, statuses
            assert statuses[OK] + statuses[RESOURCE_EXHAUSTED] == 20, statuses
            assert client.max_concurrent_streams == 1
            assert not client.closed
        with DataPlaneClient(grpcio_modules, service.port) as other:
            assert other.stats().total_rules == 0
