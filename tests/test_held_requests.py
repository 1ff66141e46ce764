"""Requests whose headers came without their body: held as headers, not started as calls.

In process, against a real GrpcHost on 127.0.0.1 (port 0) with the real clock: the
client is :class:`~reliability.h2_client.RawH2Client`, a blocking h2 client run in
worker threads, since grpcio always sends a request whole. Timing assertions leave a
wide margin on one side only (this machine is shared).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import h2.errors
import pytest
import trio
from grpclib.const import Status
from helpers_grpc import open_host
from reliability.h2_client import RawH2Client
from support.waiting import wait_until_async

from guardrefresh.server import EdgeLimits

GET_RULE_STATS = "/rule_installation.DataPlane/GetRuleStats"
OK = "0"
DEADLINE_EXCEEDED = "4"
UNAVAILABLE = "14"


@asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawH2Client]:
    client = await trio.to_thread.run_sync(RawH2Client, port)
    try:
        yield client
    finally:
        client.close()


async def in_thread(call: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(call)


def record_calls(into: list[tuple[str, Status, float]]) -> Callable[[str, Status, float], None]:
    return lambda method, status, seconds: into.append((method, status, seconds))


async def test_headers_without_a_body_wait_as_headers_and_start_when_it_comes() -> None:
    async with open_host() as (host, _servicer), raw_client(host.port) as client:
        streams = await in_thread(lambda: [client.start_call(GET_RULE_STATS) for _ in range(20)])
        await wait_until_async(lambda: host.held_requests == 20)
        assert host.calls_open == 0  # no handler, no stream object in grpclib
        assert host.in_flight == 20  # but in progress, for the drain

        def finish() -> None:
            for stream in streams:
                client.send_message(stream, b"")
            client.pump(10.0, until=lambda: len(client.statuses) == 20)

        await in_thread(finish)
        assert [client.statuses.get(stream) for stream in streams] == [OK] * 20
        assert host.held_requests == 0


async def test_a_held_request_ends_deadline_exceeded_timed_from_its_headers() -> None:
    calls: list[tuple[str, Status, float]] = []
    async with (
        open_host(request_timeout=2.0, on_call_done=record_calls(calls)) as (host, _),
        raw_client(host.port) as client,
    ):

        def attack() -> tuple[int, int, float, float]:
            started = time.monotonic()
            header_only = client.start_call(GET_RULE_STATS)
            late = client.start_call(GET_RULE_STATS)
            client.pump(1.2)
            # Part of a body 1.2 s after its headers: its call starts now, but its
            # deadline is still 2 s after the headers, not after this.
            client.send_message(late, b"\x00" * 10, declared=100)
            client.pump(5.0, until=lambda: late in client.statuses)
            late_after = time.monotonic() - started
            client.pump(5.0, until=lambda: header_only in client.statuses)
            return header_only, late, late_after, time.monotonic() - started

        header_only, late, late_after, header_only_after = await in_thread(attack)
        assert client.statuses == {header_only: DEADLINE_EXCEEDED, late: DEADLINE_EXCEEDED}
        assert 1.9 <= late_after < 3.0
        assert 1.9 <= header_only_after < 3.0
        await in_thread(
            lambda: client.pump(2.0, until=lambda: {header_only, late} <= client.resets.keys())
        )
        assert {header_only, late} <= client.resets.keys()  # the client had not finished
        assert host.held_requests == 0
    assert [status for _method, status, _s in calls] == [Status.DEADLINE_EXCEEDED] * 2
    # Reported with the seconds since their headers arrived.
    assert all(seconds >= 1.9 for _method, _status, seconds in calls)


async def test_a_held_request_the_client_resets_is_forgotten() -> None:
    calls: list[tuple[str, Status, float]] = []
    async with (
        open_host(on_call_done=record_calls(calls)) as (host, _),
        raw_client(host.port) as client,
    ):
        stream = await in_thread(lambda: client.start_call(GET_RULE_STATS))
        await wait_until_async(lambda: host.held_requests == 1)
        await in_thread(lambda: client.reset(stream))
        await wait_until_async(lambda: host.held_requests == 0)

        def whole_call() -> int:
            whole = client.start_call(GET_RULE_STATS, message=b"")
            client.pump(10.0, until=lambda: whole in client.statuses)
            return whole

        whole = await in_thread(whole_call)
        assert client.statuses == {whole: OK}
    assert [(method, status) for method, status, _s in calls] == [(GET_RULE_STATS, Status.OK)]


async def test_the_drain_waits_for_held_requests_then_refuses_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Held when the drain begins: in flight, given the grace period; a body that comes
    meanwhile is served, a request still without one is answered UNAVAILABLE at its end
    (and its stream reset). Headers that come after the drain began: UNAVAILABLE at once."""
    caplog.set_level(logging.INFO, logger="guardrefresh.server")
    async with open_host() as (host, _), raw_client(host.port) as client:
        served, refused = await in_thread(
            lambda: [client.start_call(GET_RULE_STATS) for _ in range(2)]
        )
        await wait_until_async(lambda: host.held_requests == 2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host.drain, 1.5)
            await wait_until_async(lambda: host.draining)

            def during_the_drain() -> tuple[int, float]:
                started = time.monotonic()
                late = client.start_call(GET_RULE_STATS)
                client.pump(5.0, until=lambda: late in client.statuses)
                late_after = time.monotonic() - started
                client.send_message(served, b"")
                client.pump(
                    10.0, until=lambda: served in client.statuses and refused in client.resets
                )
                return late, late_after

            late, late_after = await in_thread(during_the_drain)
        assert client.statuses.get(late) == UNAVAILABLE
        assert late_after < 1.0  # refused at once, not held
        assert client.statuses.get(served) == OK
        assert client.statuses.get(refused) == UNAVAILABLE
        assert client.resets.get(refused) == h2.errors.ErrorCodes.NO_ERROR
        assert host.report is not None
        assert host.report.in_flight_at_start == 2
        assert host.report.completed == 1 and host.report.cancelled == 1
        assert host.held_requests == 0
    assert "2 RPCs in flight (2 of them awaiting their request body)" in caplog.text
    assert "UNAVAILABLE (1 of them still awaiting their request body)" in caplog.text


async def test_a_connection_whose_requests_are_held_is_not_idle() -> None:
    limits = EdgeLimits(idle_timeout_s=0.3)
    async with (
        open_host(edge_limits=limits, request_timeout=5.0) as (host, _),
        raw_client(host.port) as client,
    ):

        def call_after_a_pause() -> int:
            stream = client.start_call(GET_RULE_STATS)
            client.pump(1.5)  # five idle timeouts
            client.send_message(stream, b"")
            client.pump(10.0, until=lambda: stream in client.statuses)
            return stream

        stream = await in_thread(call_after_a_pause)
        assert client.statuses == {stream: OK}
        assert host.edge_counts.idle_closed == 0
