"""The heap trim after request bursts: when it runs, and that it waits for quiet.

Trio logic on the autojump clock; the trim itself is the real ``malloc_trim`` (in a
worker thread), which is harmless in the test process.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import trio
import trio.testing
import trio_util

from guardrefresh.app import _trim
from guardrefresh.server import forget_stale_deadlines


async def test_trims_once_after_a_burst_and_only_once_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The trim runs in a worker thread: jump only after 0.1 s of real idleness, so
    # that virtual time does not race ahead while the thread works.
    autojump_clock.autojump_threshold = 0.1
    released = trio_util.AsyncValue(0)
    ended = trio_util.AsyncValue(0)
    in_progress = [0]
    forgotten: list[float] = []

    def forget() -> None:
        forgotten.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            _trim.trim_after_request_bursts, released, ended, lambda: in_progress[0], forget
        )
        await trio.sleep(100)
        assert forgotten == []  # idle: nothing to do, no wake-ups needed
        released.value += _trim.TRIM_AFTER_BYTES - 1
        await trio.sleep(100)
        assert forgotten == []  # not a burst yet
        in_progress[0] = 500  # the burst is still going on
        released.value += 1
        await trio.sleep(30)
        assert forgotten == []
        in_progress[0] = 0
        quiet_at = trio.current_time()
        await trio.sleep(10)
        assert len(forgotten) == 1
        assert forgotten[0] - quiet_at <= 2 * _trim.SETTLE_S + 0.01
        # Calls alone make a burst too.
        ended.value += _trim.TRIM_AFTER_CALLS
        await trio.sleep(10)
        assert len(forgotten) == 2
        nursery.cancel_scope.cancel()


async def test_forget_stale_deadlines_frees_exited_scopes_and_keeps_live_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Trio keeps an exited scope's deadline entry (and the scope) until the deadline
    # comes: what trio-asyncio's loop task leaves per wait, pinning memory after a flood.
    exited: list[weakref.ref[trio.CancelScope]] = []
    for _ in range(10):
        with trio.move_on_after(1000) as scope:
            await trio.lowlevel.checkpoint()
        exited.append(weakref.ref(scope))
    del scope
    gc.collect()
    assert all(ref() is not None for ref in exited)  # held by Trio's heap

    live_fired = trio.Event()

    async def sleeper() -> None:
        with trio.move_on_after(50):
            await trio.sleep_forever()
        live_fired.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await trio.testing.wait_all_tasks_blocked()
        forget_stale_deadlines()
        gc.collect()
        assert all(ref() is None for ref in exited)
        started = trio.current_time()
        await live_fired.wait()  # the live deadline still fires, on time
        assert trio.current_time() - started == pytest.approx(50, abs=0.01)
