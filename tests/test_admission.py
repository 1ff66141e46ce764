"""Admission: run slots, a bounded queue, round robin between connections, displacement.

The limiter lives on the asyncio side (grpclib handlers are asyncio tasks): each test
runs its asyncio body on the host's loop (``open_asyncio_loop``) under the autojump
clock, with real asyncio tasks standing in for calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from guardrefresh.server import _admission
from guardrefresh.server._admission import Admission, AdmissionRefused
from guardrefresh.server._loop import open_asyncio_loop


async def on_asyncio(body: Callable[[], Awaitable[Any]]) -> Any:
    async with open_asyncio_loop():
        return await trio_asyncio.aio_as_trio(body)()


async def settle() -> None:
    """Let every ready asyncio task run until it waits again."""
    for _ in range(5):
        await asyncio.sleep(0)


class Calls:
    """Calls that take a slot, note when they got it, and hold it until told."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.order: list[str] = []
        self.refused: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}

    def start(self, name: str, connection: str) -> None:
        self._done[name] = asyncio.Event()
        self.admission.enter(connection)  # as the request reader does at the headers
        self.tasks[name] = asyncio.create_task(self._run(name, connection))

    async def _run(self, name: str, connection: str) -> None:
        try:
            try:
                demoted = await self.admission.acquire(connection)
            except AdmissionRefused:
                self.refused.append(name)
                return
            self.order.append(name)
            try:
                await self._done[name].wait()
            finally:
                self.admission.release(demoted)
        finally:
            self.admission.leave(connection)

    async def finish(self, name: str) -> None:
        self._done[name].set()
        await settle()


async def test_calls_run_at_once_up_to_the_cap_then_wait_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        admission = Admission(max_running=2, max_queued=10)
        calls = Calls(admission)
        for name in ("a1", "a2", "a3", "a4"):
            calls.start(name, "A")
        await settle()
        assert calls.order == ["a1", "a2"]
        assert (admission.running, admission.queued) == (2, 2)
        await calls.finish("a1")
        assert calls.order == ["a1", "a2", "a3"]
        assert (admission.running, admission.queued) == (2, 1)
        for name in ("a2", "a3", "a4"):
            await calls.finish(name)
        assert calls.order == ["a1", "a2", "a3", "a4"]
        assert (admission.running, admission.queued, admission.refused) == (0, 0, 0)
        assert admission.load("A") == 0

    await on_asyncio(body)


async def test_try_acquire_takes_a_free_slot_or_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        admission = Admission(max_running=1, max_queued=10)
        calls = Calls(admission)
        assert admission.try_acquire("A") is False  # not demoted
        assert admission.try_acquire("B") is None  # would wait: nothing taken
        assert (admission.running, admission.queued) == (1, 0)
        calls.start("b1", "B")  # waits in line for the slot A holds
        await settle()
        assert calls.order == [] and admission.queued == 1
        # A call waits: the free slot is the waiting call's, not a newcomer's.
        admission.release()
        assert admission.try_acquire("C") is None
        await settle()
        assert calls.order == ["b1"] and admission.running == 1
        await calls.finish("b1")
        assert (admission.running, admission.queued, admission.refused) == (0, 0, 0)

    await on_asyncio(body)


async def test_freed_slots_go_to_connections_in_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connection with many calls waiting gets one turn per round, like one with a single call."""

    async def body() -> None:
        admission = Admission(max_running=1, max_queued=10)
        calls = Calls(admission)
        calls.start("running", "A")
        for name in ("a1", "a2", "a3", "a4"):
            calls.start(name, "A")
        await settle()
        calls.start("b1", "B")  # arrives after A's four
        calls.start("c1", "C")
        await settle()
        for name in ("running", "a1", "b1", "c1", "a2", "a3", "a4"):
            await calls.finish(name)
        assert calls.order == ["running", "a1", "b1", "c1", "a2", "a3", "a4"]
        assert (admission.running, admission.queued) == (0, 0)

    await on_asyncio(body)


async def test_a_full_queue_sheds_the_connection_with_the_most_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        admission = Admission(max_running=1, max_queued=3)
        calls = Calls(admission)
        calls.start("running", "flood")
        for name in ("f1", "f2", "f3"):
            calls.start(name, "flood")
        await settle()
        assert admission.queued == 3
        # The flooder's next call finds the queue full and has the most waiting: refused.
        calls.start("f4", "flood")
        await settle()
        assert calls.refused == ["f4"]
        # A polite connection's call takes the place of the flooder's newest.
        calls.start("p1", "polite")
        await settle()
        assert calls.refused == ["f4", "f3"]
        assert admission.waiting("polite") == 1 and admission.waiting("flood") == 2
        await calls.finish("running")
        await calls.finish("f1")
        # Round robin: the polite call is next, before the flooder's f2.
        assert calls.order == ["running", "f1", "p1"]
        for name in ("p1", "f2"):
            await calls.finish(name)
        assert calls.order == ["running", "f1", "p1", "f2"]
        assert admission.refused == 2
        assert (admission.running, admission.queued) == (0, 0)

    await on_asyncio(body)


async def test_equal_lines_refuse_the_newcomer(autojump_clock: trio.testing.MockClock) -> None:
    async def body() -> None:
        admission = Admission(max_running=1, max_queued=2)
        calls = Calls(admission)
        calls.start("running", "A")
        calls.start("a1", "A")
        calls.start("b1", "B")
        await settle()
        calls.start("b2", "B")  # B would have 2 waiting, A has 1: B is the one shed
        calls.start("c1", "C")  # C has none: displaces one of the longest (1 each)
        await settle()
        assert calls.refused[0] == "b2"
        assert len(calls.refused) == 2 and calls.refused[1] in ("a1", "b1")
        assert admission.waiting("C") == 1 and admission.queued == 2

    await on_asyncio(body)


async def test_no_queue_refuses_beyond_the_running_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        admission = Admission(max_running=1, max_queued=0)
        calls = Calls(admission)
        calls.start("running", "A")
        calls.start("b1", "B")
        await settle()
        assert calls.refused == ["b1"]
        await calls.finish("running")
        assert (admission.running, admission.queued) == (0, 0)

    await on_asyncio(body)


async def test_a_cancelled_waiter_leaves_the_line_and_holds_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        admission = Admission(max_running=1, max_queued=5)
        calls = Calls(admission)
        calls.start("running", "A")
        calls.start("b1", "B")
        calls.start("c1", "C")
        await settle()
        calls.tasks["b1"].cancel()  # its client went away while it waited
        await settle()
        assert admission.queued == 1 and admission.waiting("B") == 0
        await calls.finish("running")
        assert calls.order == ["running", "c1"]
        await calls.finish("c1")
        assert (admission.running, admission.queued) == (0, 0)

    await on_asyncio(body)


async def test_a_waiter_cancelled_as_its_turn_comes_passes_the_slot_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        admission = Admission(max_running=1, max_queued=5)
        calls = Calls(admission)
        calls.start("running", "A")
        calls.start("b1", "B")
        calls.start("c1", "C")
        await settle()
        # The slot is handed to b1, and b1 is cancelled before it resumes.
        calls._done["running"].set()
        await asyncio.sleep(0)
        calls.tasks["b1"].cancel()
        await settle()
        assert "b1" not in calls.order
        assert calls.order == ["running", "c1"]
        await calls.finish("c1")
        assert (admission.running, admission.queued) == (0, 0)

    await on_asyncio(body)


async def test_a_flood_of_cancellations_and_grants_keeps_the_counts_exact(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body() -> None:
        admission = Admission(max_running=3, max_queued=8)
        calls = Calls(admission)
        for i in range(40):
            calls.start(f"x{i}", f"conn{i % 5}")
        await settle()
        for i in range(0, 40, 3):
            calls.tasks[f"x{i}"].cancel()
        await settle()
        # Finish whatever holds a slot until nothing is left.
        for _ in range(100):
            holders = [n for n in calls.order if not calls._done[n].is_set()]
            if not holders:
                break
            await calls.finish(holders[0])
        assert (admission.running, admission.queued) == (0, 0)
        assert all(task.done() for task in calls.tasks.values())

    await on_asyncio(body)


async def test_release_without_a_slot_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    async def body() -> None:
        admission = Admission(max_running=1, max_queued=1)
        with pytest.raises(RuntimeError, match="without a slot"):
            admission.release()

    await on_asyncio(body)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_running"):
        Admission(0, 1)
    with pytest.raises(ValueError, match="max_queued"):
        Admission(1, -1)


def test_defaults_scale_with_the_cpus() -> None:
    assert _admission.default_max_running(1) == _admission.RUNNING_PER_CPU
    assert _admission.default_max_running(4) == 4 * _admission.RUNNING_PER_CPU
    assert _admission.default_max_running() >= _admission.RUNNING_PER_CPU
    assert _admission.default_max_queued(16) == 16 * _admission.QUEUED_PER_RUNNING


async def test_the_busier_connection_is_shed_even_with_as_few_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connection with many calls in progress loses its waiting call to one with one call."""

    async def body() -> None:
        admission = Admission(max_running=1, max_queued=2)
        calls = Calls(admission)
        for _ in range(20):
            admission.enter("flood")  # calls of the flooder being received or refused
        admission.enter("other")
        admission.enter("polite")
        calls.start("running", "flood")
        calls.start("f1", "flood")
        calls.start("o1", "other")
        await settle()
        assert admission.queued == 2
        # Queue full; every line has one call waiting. The polite connection (1 call in
        # progress) takes the flooder's place (20 in progress), not the other's (1).
        calls.start("p1", "polite")
        await settle()
        assert calls.refused == ["f1"]
        assert admission.waiting("polite") == 1 and admission.waiting("other") == 1
        # Equally busy connections do not displace each other.
        admission.enter("peer")
        calls.start("x1", "peer")
        await settle()
        assert calls.refused == ["f1", "x1"]
        for _ in range(20):
            admission.leave("flood")
        for key in ("other", "polite", "peer"):
            admission.leave(key)
        assert admission.load("flood") == 1  # the running call
        assert admission.load("polite") == 1 and admission.load("peer") == 0

    await on_asyncio(body)


async def test_demoted_connections_come_last_and_share_a_capped_number_of_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connection shed lately (demoted) waits behind every other connection, counts as
    the busiest in a full queue, and demoted ones hold at most ``max_demoted`` slots."""

    async def body() -> None:
        demoted = {"flood1", "flood2"}
        admission = Admission(
            max_running=4, max_queued=4, demoted=demoted.__contains__, max_demoted=2
        )
        assert admission.max_demoted == 2
        calls = Calls(admission)
        for name, connection in (("x1", "flood1"), ("x2", "flood2"), ("y1", "flood1")):
            calls.start(name, connection)
        await settle()
        # Two slots are free, but demoted connections hold their share already.
        assert calls.order == ["x1", "x2"]
        assert (admission.running, admission.running_demoted, admission.queued) == (2, 2, 1)
        calls.start("p1", "polite")  # not demoted: takes a free slot at once
        await settle()
        assert calls.order == ["x1", "x2", "p1"]
        calls.start("p2", "polite")
        calls.start("q1", "other")
        await settle()
        assert calls.order == ["x1", "x2", "p1", "p2"]
        for name, connection in (("y2", "flood2"), ("y3", "flood1")):
            calls.start(name, connection)
        await settle()
        assert admission.queued == 4  # y1, q1, y2, y3: full
        # A polite call in a full queue displaces a demoted one, not "other"'s.
        calls.start("p3", "polite")
        await settle()
        assert calls.refused == ["y3"]
        # Freed slots go to the connections not demoted first, in turn.
        await calls.finish("p1")
        await calls.finish("p2")
        assert calls.order[-2:] == ["q1", "p3"]
        # A demoted slot freed goes to the next demoted call.
        await calls.finish("x1")
        assert calls.order[-1] == "y1"
        assert admission.running_demoted == 2
        # A slot that is not demoted, freed while demoted ones hold their share, stays free.
        await calls.finish("q1")
        assert admission.running == 3 and admission.queued == 1  # y2 still waits
        await calls.finish("x2")
        assert calls.order[-1] == "y2"
        for name in ("p3", "y1", "y2"):
            await calls.finish(name)
        assert (admission.running, admission.running_demoted, admission.queued) == (0, 0, 0)

    await on_asyncio(body)


def test_the_demoted_share_is_checked() -> None:
    assert Admission(16, 64).max_demoted == 16 // _admission.DEMOTED_SHARE
    assert Admission(1, 0).max_demoted == 1
    with pytest.raises(ValueError, match="max_demoted"):
        Admission(4, 4, max_demoted=5)
