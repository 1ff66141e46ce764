"""open_asyncio_loop: trio-asyncio's loop, running ready asyncio callbacks in batches.

No sockets here: callbacks are queued with ``call_soon``/``call_later`` from Trio code,
as grpclib's transports and futures queue them. The autojump clock drives the timer test.
The first test is also the canary for the trio-asyncio internal the batching relies on,
and the "forgetting" case of the cancelled-timers test for the two the timer fix relies
on: they fail if a trio-asyncio release stops honouring them.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import gc
import logging
import re
import socket
import weakref
from typing import Any, cast

import pytest
import trio
import trio.testing
import trio_asyncio

from guardrefresh.server import open_asyncio_loop
from guardrefresh.server._loop import MAX_BATCH, drop_cancelled_timers, forget_cancelled_timers
from guardrefresh.server._throttle import LogThrottle


class LoopTaskSteps(trio.abc.Instrument):
    """Counts the steps taken by trio-asyncio's main-loop task (one per pass)."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("._main_loop"):
            self.count += 1


async def passes_to_run(loop: Any, callbacks: int) -> tuple[int, list[int]]:
    """Queue ``callbacks`` ready callbacks; the loop task's steps until all have run."""
    # One callback first: the loop task's first pass began before open_asyncio_loop
    # could batch it.
    loop.call_soon(lambda: None)
    await trio.testing.wait_all_tasks_blocked()
    steps = LoopTaskSteps()
    ran: list[int] = []
    trio.lowlevel.add_instrument(steps)
    try:
        for i in range(callbacks):
            loop.call_soon(ran.append, i)
        await trio.testing.wait_all_tasks_blocked()
    finally:
        trio.lowlevel.remove_instrument(steps)
    return steps.count, ran


async def test_ready_callbacks_run_in_one_pass_of_the_loop_task() -> None:
    async with trio_asyncio.open_loop() as loop:
        unbatched, ran = await passes_to_run(loop, 10)
    assert ran == list(range(10))
    assert unbatched == 10  # trio-asyncio alone: one pass of its task per callback

    async with open_asyncio_loop() as loop:
        batched, ran = await passes_to_run(loop, 10)
    assert ran == list(range(10))
    assert batched == 1


class Timeline:
    """What ran, and when (Trio's clock), since it was made: ``note`` is the callback."""

    def __init__(self) -> None:
        self.start = trio.current_time()
        self.seen: list[tuple[object, float]] = []

    def note(self, what: object) -> None:
        self.seen.append((what, trio.current_time() - self.start))


async def test_due_timers_and_ready_callbacks_keep_asyncio_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_asyncio_loop() as loop:
        timeline = Timeline()
        loop.call_later(2.0, timeline.note, "later-2")
        loop.call_later(1.0, timeline.note, "later-1")
        loop.call_soon(timeline.note, "soon-a")
        loop.call_soon(timeline.note, "soon-b")
        await trio.sleep(3.0)
    assert timeline.seen == [
        ("soon-a", 0.0),
        ("soon-b", 0.0),
        ("later-1", 1.0),
        ("later-2", 2.0),
    ]


async def filed_timers(loop: Any, count: int, delay: float) -> list[weakref.ref[Any]]:
    """``count`` timers due in ``delay`` s, in the loop's heap, then cancelled."""
    handles = [loop.call_later(delay, lambda: None) for _ in range(count)]
    await trio.testing.wait_all_tasks_blocked()  # the loop task has filed them
    for handle in handles:
        handle.cancel()
    return [weakref.ref(handle) for handle in handles]


@pytest.mark.parametrize("forget", [False, True], ids=["trio-asyncio", "forgetting"])
async def test_cancelled_timers_are_forgotten_before_they_are_due(forget: bool) -> None:
    """grpclib starts and cancels a deadline timer for every call."""
    async with trio_asyncio.open_loop() as loop:
        if forget:
            forget_cancelled_timers(loop)
        kept = await filed_timers(loop, 1000, delay=3600.0)
        remembered = sum(ref() is not None for ref in kept)
    if forget:
        # Rebuilt at each half cancelled, down to asyncio's 100-timer floor.
        assert remembered <= 101
    else:
        assert remembered == 1000  # trio-asyncio alone: every one until its hour is up


async def test_live_timers_fire_in_order_after_the_heap_is_rebuilt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_asyncio_loop() as loop:
        timeline = Timeline()
        # Filed latest first, so that the heap's order is not its filing order.
        handles = {i: loop.call_later(1.0 + i, timeline.note, i) for i in reversed(range(300))}
        await trio.testing.wait_all_tasks_blocked()
        for i, handle in handles.items():
            if i % 3:
                handle.cancel()  # 200 of 300: more than half, so the heap is rebuilt
        assert len(loop._timers) < 300
        await trio.sleep(301.0)
    assert timeline.seen == [(i, 1.0 + i) for i in range(0, 300, 3)]


async def test_drop_cancelled_timers_empties_the_heap_of_them_and_live_ones_still_fire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What forget_cancelled_timers may keep (up to half the heap), the trim drops."""
    async with open_asyncio_loop() as loop:
        timeline = Timeline()
        live = [loop.call_later(10.0 + i, timeline.note, i) for i in range(60)]
        kept = await filed_timers(loop, 50, delay=3600.0)  # under the rebuild threshold
        gc.collect()
        assert all(ref() is not None for ref in kept)
        assert drop_cancelled_timers(loop) == 50
        gc.collect()
        assert all(ref() is None for ref in kept)
        assert len(loop._timers) == len(live)
        await trio.sleep(100.0)
    assert timeline.seen == [(i, 10.0 + i) for i in range(60)]


async def test_closing_the_loop_still_cancels_every_pending_timer() -> None:
    # trio-asyncio cancels them one by one while iterating its heap; each cancellation
    # may rebuild the heap.
    async with open_asyncio_loop() as loop:
        handles = [loop.call_later(3600.0, lambda: None) for _ in range(300)]
        await trio.testing.wait_all_tasks_blocked()
    assert all(handle.cancelled() for handle in handles)


async def test_a_callback_storm_leaves_trio_tasks_a_turn_every_batch() -> None:
    batches = 20
    ticks = 0
    async with open_asyncio_loop() as loop:
        done = trio.Event()
        left = batches * MAX_BATCH

        def again() -> None:
            # Each callback queues the next, as a busy connection's reads would.
            nonlocal left
            left -= 1
            if left:
                loop.call_soon(again)
            else:
                done.set()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await trio.lowlevel.checkpoint()

        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            loop.call_soon(again)
            nursery.start_soon(ticker)
    assert left == 0
    # At least one turn per batch (no starvation), and about one: callbacks were batched
    # (one per callback would be 1,280 turns).
    assert batches - 1 <= ticks <= 2 * batches + 2


async def test_exit_still_runs_every_queued_callback() -> None:
    ran: list[int] = []
    async with open_asyncio_loop() as loop:
        for i in range(3 * MAX_BATCH + 5):
            loop.call_soon(ran.append, i)
    assert ran == list(range(3 * MAX_BATCH + 5))


# ------------------------------------------------------------ error containment ---


async def test_an_error_in_an_asyncio_callback_is_logged_not_raised_into_the_nursery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # trio-asyncio's own handler re-raises into the nursery running the loop: the
    # service's root nursery, so one failing callback ended the process.
    def fail() -> None:
        raise RuntimeError("a bug in some callback")

    with caplog.at_level(logging.ERROR, logger="guardrefresh.server._loop_errors"):
        async with open_asyncio_loop() as loop:
            loop.call_soon(fail)
            await trio.testing.wait_all_tasks_blocked()
            ran: list[int] = []
            loop.call_soon(ran.append, 1)
            await trio.testing.wait_all_tasks_blocked()
            assert ran == [1]
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "asyncio: Exception in callback" in record.getMessage()
    assert record.exc_info is not None and "a bug in some callback" in str(record.exc_info[1])


class _FailingProtocol(asyncio.Protocol):
    """Raises from data_received, as grpclib did on an unknown HTTP/2 frame."""

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError(f"cannot handle {data!r}")


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return sock.recv(100)


async def test_a_connection_whose_protocol_raises_is_closed_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The net under the connection guard: an unguarded protocol that raises."""
    with caplog.at_level(logging.WARNING, logger="guardrefresh.server._loop_errors"):
        async with open_asyncio_loop() as loop:
            failing = await trio_asyncio.aio_as_trio(loop.create_server)(
                _FailingProtocol, "127.0.0.1", 0
            )
            echo = await trio_asyncio.aio_as_trio(loop.create_server)(_EchoProtocol, "127.0.0.1", 0)
            try:
                failing_port = failing.sockets[0].getsockname()[1]
                echo_port = echo.sockets[0].getsockname()[1]
                # The failing connection is closed: the client reads EOF.
                assert await trio.to_thread.run_sync(_exchange, failing_port, b"x") == b""
                assert await trio.to_thread.run_sync(_exchange, echo_port, b"ping") == b"ping"
            finally:
                failing.close()
                echo.close()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert re.search(
        r"connection from 127\.0\.0\.1:\d+ failed \(Fatal error: protocol\.data_received\(\) "
        r"call failed\.: NotImplementedError",
        record.getMessage(),
    ), record.getMessage()


async def test_an_accept_retry_for_a_closed_listener_is_skipped() -> None:
    """asyncio retries accept() a second after EMFILE; a drain may close it meanwhile."""
    async with open_asyncio_loop() as loop:
        sock = socket.socket()
        sock.close()
        # Unguarded, this registered descriptor -1 with the loop: ValueError.
        loop._start_serving(asyncio.Protocol, sock)  # type: ignore[attr-defined]
        await trio.testing.wait_all_tasks_blocked()


def test_the_log_throttle_logs_once_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = LogThrottle(10.0, clock=lambda: now[0])
    assert throttle.ready() == 0
    assert [throttle.ready() for _ in range(5)] == [None] * 5
    now[0] = 10.0
    assert throttle.ready() == 5
    assert LogThrottle.suffix(5) == " (5 more since the last report)"
    assert LogThrottle.suffix(0) == ""


async def _coroutine_function() -> None:
    pass


async def test_callbacks_are_checked_in_debug_mode_only_as_in_asyncio() -> None:
    async with open_asyncio_loop() as loop:
        assert not loop.get_debug()
        # asyncio does not look at the callback unless in debug mode; nor does the loop.
        loop.call_soon(_coroutine_function).cancel()
        loop.call_later(60.0, _coroutine_function).cancel()
        loop.set_debug(True)
        try:
            with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
                loop.call_soon(_coroutine_function)
            with pytest.raises(TypeError, match="call_at"):
                loop.call_at(loop.time() + 60.0, _coroutine_function)
        finally:
            loop.set_debug(False)
        fired = trio.Event()
        loop.call_soon(fired.set)
        with trio.fail_after(5):
            await fired.wait()
