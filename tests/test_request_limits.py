"""RequestReader and ByteBudget: size limit, pending-bytes budget, receive deadline, admission.

The reader sits between grpclib's request reads and the network; here it reads from a
scripted source on the host's asyncio loop, under the autojump clock, so that a
30-second receive deadline passes at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from guardrefresh.server._admission import Admission
from guardrefresh.server._budget import ByteBudget
from guardrefresh.server._intake import RequestLimits, RequestReader
from guardrefresh.server._loop import open_asyncio_loop

TIMEOUT_S = 30.0


async def on_asyncio(body: Callable[[], Awaitable[Any]]) -> Any:
    async with open_asyncio_loop():
        return await trio_asyncio.aio_as_trio(body)()


class Source:
    """Request bytes as a client sends them: each read waits until its bytes are let through."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self._ready: asyncio.Queue[bytes] = asyncio.Queue()

    def send(self, data: bytes) -> None:
        self._ready.put_nowait(data)

    async def read(self, size: int) -> bytes:
        self.asked.append(size)
        data = await self._ready.get()
        assert len(data) == size or data == b""
        return data


def prefix(length: int) -> bytes:
    return b"\x00" + length.to_bytes(4, "big")


def limits(
    *, budget: int = 1000, max_message: int = 900, admission: Admission | None = None
) -> RequestLimits:
    return RequestLimits(
        max_message_bytes=max_message,
        budget=ByteBudget(budget),
        request_timeout=TIMEOUT_S,
        admission=admission,
    )


async def read_message(reader: RequestReader, source: Source) -> bytes:
    """What grpclib's recv_message does: the prefix, then the body."""
    meta = await reader.read(source.read, 5)
    if not meta:
        return b""
    return await reader.read(source.read, int.from_bytes(meta[1:], "big"))


async def test_a_message_over_the_size_limit_is_refused_before_it_is_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        lim = limits(max_message=100)
        reader = RequestReader(lim, connection="A", admit=True)
        source = Source()
        source.send(prefix(101))
        with pytest.raises(GRPCError) as info:
            await read_message(reader, source)
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert "101 bytes exceeds the limit of 100" in str(info.value.message)
        assert source.asked == [5]  # the body was never read
        assert lim.budget.in_use == 0

    await on_asyncio(body)


async def test_a_body_holds_its_declared_length_while_it_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        lim = limits(budget=1000)
        first = RequestReader(lim, connection="A", admit=False)
        second = RequestReader(lim, connection="B", admit=False)
        slow, other = Source(), Source()
        slow.send(prefix(800))
        reading = asyncio.create_task(read_message(first, slow))
        await asyncio.sleep(0.1)
        assert lim.budget.in_use == 800  # declared, though nothing of it came yet
        # A body that does not fit beside it is refused at once ...
        other.send(prefix(300))
        with pytest.raises(GRPCError) as info:
            await read_message(second, other)
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert "800 of 1000 bytes" in str(info.value.message)
        # ... one that fits is read.
        small = RequestReader(lim, connection="B", admit=False)
        other.send(prefix(200))
        other.send(bytes(200))
        assert await read_message(small, other) == bytes(200)
        slow.send(bytes(800))
        assert await reading == bytes(800)
        assert lim.budget.in_use == 0
        assert lim.budget.released.value == 1000

    await on_asyncio(body)


async def test_an_empty_message_needs_no_budget(autojump_clock: trio.testing.MockClock) -> None:
    async def body() -> None:
        lim = limits(budget=0)
        reader = RequestReader(lim, connection="A", admit=False)
        source = Source()
        source.send(prefix(0))
        source.send(b"")
        assert await read_message(reader, source) == b""
        assert source.asked == [5, 0]

    await on_asyncio(body)


async def test_a_first_message_that_does_not_arrive_in_time_ends_deadline_exceeded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        lim = limits()
        reader = RequestReader(lim, connection="A", admit=False)
        source = Source()
        started = asyncio.get_running_loop().time()
        source.send(prefix(400))  # the prefix comes, the body never does
        with pytest.raises(GRPCError) as info:
            await read_message(reader, source)
        assert info.value.status is Status.DEADLINE_EXCEEDED
        assert "not received within 30 s" in str(info.value.message)
        assert asyncio.get_running_loop().time() - started == pytest.approx(TIMEOUT_S)
        assert lim.budget.in_use == 0 and lim.budget.released.value == 400

    await on_asyncio(body)


async def test_the_deadline_counts_from_the_headers_and_bytes_already_in_need_no_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        # Headers that waited 20 s before the call started: 10 s of the 30 are left.
        reader = RequestReader(limits(), connection="A", admit=False, headers_at=loop.time() - 20.0)
        source = Source()
        started = loop.time()
        with pytest.raises(GRPCError) as info:
            await reader.read(source.read, 5, lambda size: False)
        assert info.value.status is Status.DEADLINE_EXCEEDED
        assert loop.time() - started == pytest.approx(10.0)

        # A read whose bytes are in (arrived) is not timed: no timer, no deadline.
        reader = RequestReader(limits(), connection="A", admit=False)
        source = Source()
        timers = len(loop._timers)  # type: ignore[attr-defined]
        reading = asyncio.ensure_future(reader.read(source.read, 5, lambda size: True))
        await asyncio.sleep(0)
        assert len(loop._timers) == timers  # type: ignore[attr-defined]
        await asyncio.sleep(40.0)  # past the request timeout: the read still waits
        assert not reading.done()
        source.send(prefix(0))
        assert await reading == prefix(0)

    await on_asyncio(body)


async def test_headers_without_any_message_end_deadline_exceeded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        reader = RequestReader(limits(), connection="A", admit=False)
        with pytest.raises(GRPCError) as info:
            await read_message(reader, Source())
        assert info.value.status is Status.DEADLINE_EXCEEDED

    await on_asyncio(body)


async def test_a_later_message_is_timed_from_its_prefix_not_from_the_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A streaming call may be idle between messages; a started message must finish."""

    async def body() -> None:
        reader = RequestReader(limits(), connection="A", admit=False)
        source = Source()
        source.send(prefix(3))
        source.send(b"abc")
        assert await read_message(reader, source) == b"abc"
        idle = asyncio.create_task(read_message(reader, source))
        await asyncio.sleep(10 * TIMEOUT_S)
        assert not idle.done()  # waiting for the next prefix: no deadline
        source.send(prefix(3))
        await asyncio.sleep(TIMEOUT_S - 1)
        source.send(b"def")
        assert await idle == b"def"
        stalled = asyncio.create_task(read_message(reader, source))
        source.send(prefix(3))
        await asyncio.sleep(TIMEOUT_S + 1)
        assert stalled.done()
        with pytest.raises(GRPCError) as info:
            stalled.result()
        assert info.value.status is Status.DEADLINE_EXCEEDED

    await on_asyncio(body)


async def test_the_end_of_the_stream_reads_as_no_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        reader = RequestReader(limits(), connection="A", admit=True)
        source = Source()
        source.send(b"")
        assert await reader.read(source.read, 5) == b""

    await on_asyncio(body)


async def test_a_received_call_waits_for_a_slot_holding_its_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        admission = Admission(max_running=1, max_queued=4)
        lim = limits(admission=admission)
        running = RequestReader(lim, connection="A", admit=True)
        source = Source()
        source.send(prefix(10))
        source.send(bytes(10))
        assert await read_message(running, source) == bytes(10)
        assert running.holds_slot and admission.running == 1
        assert lim.budget.in_use == 0

        waiting = RequestReader(lim, connection="B", admit=True)
        other = Source()
        other.send(prefix(50))
        other.send(bytes(50))
        task = asyncio.create_task(read_message(waiting, other))
        await asyncio.sleep(1)
        assert not task.done() and admission.queued == 1
        assert lim.budget.in_use == 50  # its bytes still wait
        running.finish()
        assert await task == bytes(50)
        assert waiting.holds_slot and not running.holds_slot
        assert lim.budget.in_use == 0
        waiting.finish()
        waiting.finish()  # idempotent
        assert (admission.running, admission.queued) == (0, 0)

    await on_asyncio(body)


async def test_a_refused_call_ends_resource_exhausted_and_gives_its_bytes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        admission = Admission(max_running=1, max_queued=0)
        lim = limits(admission=admission)
        running = RequestReader(lim, connection="A", admit=True)
        source = Source()
        source.send(prefix(1))
        source.send(b"x")
        await read_message(running, source)
        refused = RequestReader(lim, connection="B", admit=True)
        other = Source()
        other.send(prefix(20))
        other.send(bytes(20))
        with pytest.raises(GRPCError) as info:
            await read_message(refused, other)
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert "server at capacity" in str(info.value.message)
        assert not refused.holds_slot and lim.budget.in_use == 0
        # Calls that are exempt from admission run regardless.
        exempt = RequestReader(lim, connection="B", admit=False)
        other.send(prefix(1))
        other.send(b"y")
        assert await read_message(exempt, other) == b"y"
        assert not exempt.holds_slot
        running.finish()
        assert admission.running == 0

    await on_asyncio(body)


async def test_cancelled_while_reading_gives_the_bytes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        lim = limits()
        reader = RequestReader(lim, connection="A", admit=True)
        source = Source()
        source.send(prefix(300))
        task = asyncio.create_task(read_message(reader, source))
        await asyncio.sleep(1)
        assert lim.budget.in_use == 300
        task.cancel()  # the client reset the stream
        with pytest.raises(asyncio.CancelledError):
            await task
        assert lim.budget.in_use == 0

    await on_asyncio(body)


def test_budget_accounting() -> None:
    budget = ByteBudget(10)
    assert budget.try_reserve(0) and budget.try_reserve(10)
    assert not budget.try_reserve(1)
    with pytest.raises(ValueError, match="cannot release 11"):
        budget.release(11)
    budget.release(4)
    assert budget.in_use == 6 and budget.released.value == 4
    with pytest.raises(ValueError, match="size"):
        budget.try_reserve(-1)
    with pytest.raises(ValueError, match="limit"):
        ByteBudget(-1)


async def test_someone_can_wait_for_bytes_to_be_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = ByteBudget(100)
    assert budget.try_reserve(60)
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            await budget.released.wait_value(lambda v: v >= 50)

        nursery.start_soon(waiter)
        await trio.sleep(1)
        budget.release(60)


async def test_a_shed_connection_is_not_read_for_a_while(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ShedBackoff pauses a real transport's reading, restarts on a new shed, then resumes."""

    async def body() -> None:
        import random
        import socket

        from guardrefresh.server._intake import ShedBackoff

        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        try:
            backoff = ShedBackoff(4.0, rng=random.Random(1))
            backoff.shed(transport)
            assert not transport.is_reading() and backoff.paused == 1
            await asyncio.sleep(1.9)  # the shortest pause is half of 4 s
            assert not transport.is_reading()
            backoff.shed(transport)  # shed again: the pause starts over
            await asyncio.sleep(1.9)
            assert not transport.is_reading()
            await asyncio.sleep(4.5)  # the longest pause is 1.5 x 4 s
            assert transport.is_reading() and backoff.paused == 0
            transport.close()
            backoff.shed(transport)  # a closing connection is left alone
            assert backoff.paused == 0
        finally:
            transport.close()
            theirs.close()

    await on_asyncio(body)


async def test_a_shed_connection_is_held_to_fewer_streams_until_forgiven(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ShedBackoff asks for the shed stream limit once, keeps it while sheds go on, and
    restores the usual limit after ``forgive_s`` without one."""

    async def body() -> None:
        import socket

        from guardrefresh.server._intake import ShedBackoff

        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        limits: list[int | None] = []
        try:
            backoff = ShedBackoff(
                4.0,
                shed_streams=1,
                forgive_s=30.0,
                limit_streams=lambda _connection, limit: limits.append(limit),
            )
            backoff.shed(transport)
            assert limits == [1] and backoff.is_limited(transport) and backoff.limited == 1
            await asyncio.sleep(20.0)
            backoff.shed(transport)  # shed again: limited already, the clock starts over
            assert limits == [1]
            await asyncio.sleep(29.0)
            assert backoff.is_limited(transport)
            await asyncio.sleep(2.0)
            assert limits == [1, None] and not backoff.is_limited(transport)
            assert transport.is_reading()  # the pause ended long ago
        finally:
            transport.close()
            theirs.close()

    await on_asyncio(body)


async def test_a_refused_call_makes_its_connection_back_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        shed: list[object] = []

        class Recorder:
            def shed(self, connection: object) -> None:
                shed.append(connection)

        admission = Admission(max_running=1, max_queued=0)
        lim = RequestLimits(
            max_message_bytes=100,
            budget=ByteBudget(100),
            request_timeout=TIMEOUT_S,
            admission=admission,
            backoff=Recorder(),  # type: ignore[arg-type]
        )
        running = RequestReader(lim, connection="A", admit=True)
        source = Source()
        source.send(prefix(0))
        source.send(b"")
        await read_message(running, source)
        assert admission.load("A") == 1
        refused = RequestReader(lim, connection="B", admit=True)
        source.send(prefix(0))
        source.send(b"")
        with pytest.raises(GRPCError):
            await read_message(refused, source)
        assert shed == ["B"]
        refused.finish()
        running.finish()
        assert admission.load("A") == admission.load("B") == 0

    await on_asyncio(body)
