"""The asyncio loop grpclib runs on: trio-asyncio's, running ready callbacks in batches.

trio-asyncio runs every asyncio callback as one pass of its main-loop task: take the
handle from a Trio memory channel inside a fresh cancel scope, run it, go back through
Trio's scheduler. A unary call costs about seven callbacks (socket reads, task steps,
future wake-ups), so that round trip per callback was most of what hosting grpclib
inside Trio added over plain asyncio: 2.7 % more instructions per GetRuleStats and 2.4 %
per GetRule than the same handlers on ``asyncio.run`` (callgrind, 400 calls), 0.9 % and
0.8 % with batches (bench/README.md).

Plain asyncio runs every callback that is ready in one iteration of its loop.
:func:`open_asyncio_loop` does the same: after each callback trio-asyncio runs, the
callbacks already queued and the timers already due run straight away, up to
:data:`MAX_BATCH` of them, before the loop task goes back to Trio. Trio tasks therefore
wait for at most one batch, as asyncio tasks wait for one loop iteration; callbacks keep
their order.

This reaches one private method of trio-asyncio (pinned ``trio-asyncio==0.16.*``):
``TrioEventLoop._main_loop_one(no_wait)``, which runs one queued callback or due timer
and, with ``no_wait=True``, raises :exc:`trio.WouldBlock` instead of waiting when there
is none. trio-asyncio's own shutdown drains the loop through the same call. If a release
drops it, :func:`batch_callbacks` logs a warning and the loop runs unbatched (slower,
still correct); ``tests/test_asyncio_loop.py`` fails first.

trio-asyncio also keeps a cancelled timer in its heap until the timer's due time (its
``_timer_handle_cancelled`` does nothing). grpclib starts a timer for every call with a
deadline and cancels it when the call ends, so a client sending 60 s deadlines left the
last minute's calls' timers in memory: 15,000 at 250 calls/s, and one wasted wake-up
of the loop task for each as it came due. :func:`forget_cancelled_timers` drops them
as asyncio does: when more than half of a heap of over 100 timers are cancelled, the
heap is rebuilt without them. It reaches trio-asyncio's ``_timers`` heap and its
``_timer_handle_cancelled`` hook, checked the same way.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio_asyncio

from ._loop_errors import contain_loop_errors, guard_accept_retry

__all__ = [
    "MAX_BATCH",
    "batch_callbacks",
    "drop_cancelled_timers",
    "forget_cancelled_timers",
    "open_asyncio_loop",
]

logger = logging.getLogger(__name__)

#: Callbacks one pass of the loop task may run before Trio's other tasks get a turn.
#: A few concurrent calls' worth; bounds how long a storm of asyncio callbacks can keep
#: Trio's tasks (the refresher, the signal handler) waiting.
MAX_BATCH = 64

#: asyncio's thresholds (``base_events``): a timer heap is rebuilt once it holds more
#: than this many timers and more than half of them are cancelled.
_MIN_TIMERS_TO_REBUILD = 100


@asynccontextmanager
async def open_asyncio_loop() -> AsyncIterator[trio_asyncio.TrioEventLoop]:
    """``trio_asyncio.open_loop()`` with :func:`batch_callbacks` and
    :func:`forget_cancelled_timers` applied, and errors contained
    (:func:`~guardrefresh.server._loop_errors.contain_loop_errors`,
    :func:`~guardrefresh.server._loop_errors.guard_accept_retry`): an exception no asyncio
    code caught is logged, never re-raised into the caller's nursery.

    Behaves as ``trio_asyncio.open_loop()`` does on cancellation and errors, and on exit
    runs the callbacks still queued, then closes the loop.
    """
    async with trio_asyncio.open_loop() as loop:
        contain_loop_errors(loop)
        guard_accept_retry(loop)
        batch_callbacks(loop)
        forget_cancelled_timers(loop)
        yield loop


def batch_callbacks(loop: trio_asyncio.TrioEventLoop) -> bool:
    """Make each pass of ``loop``'s main-loop task run every ready callback, up to
    :data:`MAX_BATCH`; returns whether it could.

    Takes effect from the loop task's next pass (the current one is waiting for a
    callback already). A callback that raises trio-asyncio's stop signal ends the batch
    the way it ends a single pass.
    """
    run_one: Callable[..., Awaitable[None]] | None = getattr(loop, "_main_loop_one", None)
    if run_one is None or "no_wait" not in inspect.signature(run_one).parameters:
        logger.warning(
            "trio-asyncio %s has no _main_loop_one(no_wait); asyncio callbacks run one per "
            "Trio scheduler pass (slower gRPC)",
            trio_asyncio.__version__,
        )
        return False

    async def run_ready(no_wait: bool = False) -> None:
        await run_one(no_wait=no_wait)
        for _ in range(MAX_BATCH - 1):
            try:
                await run_one(no_wait=True)
            except trio.WouldBlock:
                return

    # An instance attribute shadows the method; _main_loop looks it up on every pass.
    loop._main_loop_one = run_ready
    return True


def forget_cancelled_timers(loop: trio_asyncio.TrioEventLoop) -> bool:
    """Make ``loop`` drop cancelled timers from its heap as asyncio does; returns
    whether it could.

    Counts cancellations; once they exceed half of a heap of more than 100 timers, the
    heap is rebuilt with only the live ones (asyncio's rule, so memory stays within
    about twice the live timers, at an amortised constant cost per cancellation).
    Timers still run in due order.
    """
    if not isinstance(getattr(loop, "_timers", None), list) or not callable(
        getattr(loop, "_timer_handle_cancelled", None)
    ):
        logger.warning(
            "trio-asyncio %s has no _timers heap or _timer_handle_cancelled hook; cancelled "
            "asyncio timers stay in memory until due",
            trio_asyncio.__version__,
        )
        return False
    cancelled = 0

    def timer_handle_cancelled(handle: asyncio.TimerHandle) -> None:
        # Called by TimerHandle.cancel() just before it marks ``handle`` cancelled.
        nonlocal cancelled
        cancelled += 1
        timers: list[asyncio.TimerHandle] = loop._timers
        if len(timers) > _MIN_TIMERS_TO_REBUILD and 2 * cancelled > len(timers):
            live = [t for t in timers if not t.cancelled() and t is not handle]
            heapq.heapify(live)
            # A new list, not the old one changed in place: trio-asyncio looks the heap
            # up afresh at each use, but cancels all timers at close by iterating it.
            loop._timers = live
            cancelled = 0

    # An instance attribute shadows the no-op method TimerHandle.cancel() calls.
    loop._timer_handle_cancelled = timer_handle_cancelled
    return True


def drop_cancelled_timers(loop: trio_asyncio.TrioEventLoop) -> int:
    """Rebuild ``loop``'s timer heap without its cancelled timers now; how many it
    dropped (0 if the heap is not reachable).

    :func:`forget_cancelled_timers` lets up to half of the heap be cancelled timers.
    After a flood those (each a handle, its context and its callback) are among the
    last small objects in otherwise empty pymalloc arenas, which CPython returns to the
    OS only once wholly empty; the trim after a burst calls this before collecting.
    """
    timers = getattr(loop, "_timers", None)
    if not isinstance(timers, list):
        return 0
    live = [t for t in timers if not t.cancelled()]
    heapq.heapify(live)
    # A new list, as in forget_cancelled_timers. Its count of cancellations may now
    # overstate the heap's: the next rebuild merely comes sooner.
    loop._timers = live
    return len(timers) - len(live)
