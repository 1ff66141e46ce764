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

trio-asyncio also keeps a cancelled timer in its heap until the timer's due time (its
``_timer_handle_cancelled`` does nothing). grpclib starts a timer for every call with a
deadline and cancels it when the call ends, so a client sending 60 s deadlines left the
last minute's calls' timers in memory: 15,000 at 250 calls/s, and one wasted wake-up
of the loop task for each as it came due. :func:`forget_cancelled_timers` drops them
as asyncio does: when more than half of a heap of over 100 timers are cancelled, the
heap is rebuilt without them.

trio-asyncio also checks every callback it is given, where asyncio does so only in
debug mode; :func:`check_callbacks_in_debug_only` restores asyncio's behaviour.

These reach trio-asyncio internals (its main-loop step, its timer heap, its callback
check) through ``_dependency_internals``, which :func:`open_asyncio_loop` checks before
anything else: a trio-asyncio without them refuses to start.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio_asyncio

from . import _dependency_internals as internals
from ._loop_errors import contain_loop_errors, guard_accept_retry

__all__ = [
    "MAX_BATCH",
    "batch_callbacks",
    "check_callbacks_in_debug_only",
    "drop_cancelled_timers",
    "forget_cancelled_timers",
    "open_asyncio_loop",
]

#: Callbacks one pass of the loop task may run before Trio's other tasks get a turn.
#: A few concurrent calls' worth; bounds how long a storm of asyncio callbacks can keep
#: Trio's tasks (the refresher, the signal handler) waiting.
MAX_BATCH = 64

#: asyncio's thresholds (``base_events``): a timer heap is rebuilt once it holds more
#: than this many timers and more than half of them are cancelled.
_MIN_TIMERS_TO_REBUILD = 100


@asynccontextmanager
async def open_asyncio_loop() -> AsyncIterator[trio_asyncio.TrioEventLoop]:
    """``trio_asyncio.open_loop()``, checked, with :func:`batch_callbacks` and
    :func:`forget_cancelled_timers` applied, and errors contained
    (:func:`~guardrefresh.server._loop_errors.contain_loop_errors`,
    :func:`~guardrefresh.server._loop_errors.guard_accept_retry`): an exception no asyncio
    code caught is logged, never re-raised into the caller's nursery.

    Raises :exc:`~._dependency_internals.DependencyInternalsError` (and closes the loop)
    when an internal of grpclib, h2, trio-asyncio or asyncio that the server relies on is
    missing (:func:`~._dependency_internals.check_dependency_internals`). Behaves as
    ``trio_asyncio.open_loop()`` does on cancellation and errors, and on exit runs the
    callbacks still queued, then closes the loop.
    """
    async with trio_asyncio.open_loop() as loop:
        internals.check_dependency_internals(loop)
        contain_loop_errors(loop)
        guard_accept_retry(loop)
        batch_callbacks(loop)
        forget_cancelled_timers(loop)
        check_callbacks_in_debug_only(loop)
        yield loop


def batch_callbacks(loop: trio_asyncio.TrioEventLoop) -> None:
    """Make each pass of ``loop``'s main-loop task run every ready callback, up to
    :data:`MAX_BATCH`.

    Takes effect from the loop task's next pass (the current one is waiting for a
    callback already). A callback that raises trio-asyncio's stop signal ends the batch
    the way it ends a single pass.
    """

    def batched(run_one: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(run_one)  # keeps its signature for the start-up check
        async def run_ready(no_wait: bool = False) -> None:
            await run_one(no_wait=no_wait)
            for _ in range(MAX_BATCH - 1):
                try:
                    await run_one(no_wait=True)
                except trio.WouldBlock:
                    return

        return run_ready

    internals.wrap_run_one(loop, batched)


def check_callbacks_in_debug_only(loop: trio_asyncio.TrioEventLoop) -> None:
    """Make ``loop`` check that a callback is not a coroutine only in debug mode, as
    asyncio does.

    trio-asyncio runs asyncio's check on every ``call_soon``, ``call_at`` and
    ``call_later``: two ``inspect`` lookups per callback, about 25 µs of a 600 µs
    GetRule over gRPC (a unary call schedules a dozen callbacks). A mistaken coroutine
    callback still fails in debug mode (``PYTHONASYNCIODEBUG=1``), as in asyncio.
    """

    def in_debug_only(check: internals.CallbackCheck) -> internals.CallbackCheck:
        def check_in_debug(callback: Callable[..., object], method: str) -> None:
            if loop.get_debug():
                check(callback, method)

        return check_in_debug

    internals.wrap_callback_check(loop, in_debug_only)


def forget_cancelled_timers(loop: trio_asyncio.TrioEventLoop) -> None:
    """Make ``loop`` drop cancelled timers from its heap as asyncio does.

    Counts cancellations; once they exceed half of a heap of more than 100 timers, the
    heap is rebuilt with only the live ones (asyncio's rule, so memory stays within
    about twice the live timers, at an amortised constant cost per cancellation).
    Timers still run in due order.
    """
    cancelled = 0

    def timer_handle_cancelled(handle: asyncio.TimerHandle) -> None:
        # Called by TimerHandle.cancel() just before it marks ``handle`` cancelled.
        nonlocal cancelled
        cancelled += 1
        timers = internals.timer_heap(loop)
        if len(timers) > _MIN_TIMERS_TO_REBUILD and 2 * cancelled > len(timers):
            live = [t for t in timers if not t.cancelled() and t is not handle]
            heapq.heapify(live)
            internals.replace_timer_heap(loop, live)
            cancelled = 0

    internals.on_timer_cancelled(loop, timer_handle_cancelled)


def drop_cancelled_timers(loop: trio_asyncio.TrioEventLoop) -> int:
    """Rebuild ``loop``'s timer heap without its cancelled timers now; how many it
    dropped (0 if the heap is not reachable).

    :func:`forget_cancelled_timers` lets up to half of the heap be cancelled timers.
    After a flood those (each a handle, its context and its callback) are among the
    last small objects in otherwise empty pymalloc arenas, which CPython returns to the
    OS only once wholly empty; the trim after a burst calls this before collecting.
    """
    timers = internals.timer_heap(loop)
    live = [t for t in timers if not t.cancelled()]
    heapq.heapify(live)
    # A new list, as in forget_cancelled_timers. Its count of cancellations may now
    # overstate the heap's: the next rebuild merely comes sooner.
    internals.replace_timer_heap(loop, live)
    return len(timers) - len(live)


def forget_stale_deadlines() -> None:
    """Drop the entries of exited cancel scopes from Trio's deadline heap.

    Trio pushes ``(deadline, id, scope)`` on its heap each time a scope with a deadline
    is entered (trio-asyncio's loop task enters one per wait for an asyncio timer) and
    leaves the entry there after the scope exits, until its deadline comes or more than
    1,000 plus twice the live entries pile up. After a flood those stale entries (a
    tuple, a float, an int and the dead scope each) were the last live small objects in
    dozens of otherwise empty 1 MiB pymalloc arenas, which CPython returns to the OS
    only once wholly empty: 50 MB stayed resident. Trio's own pruning, called early,
    keeps exactly the live entries. Must run in the Trio thread.
    """
    internals.prune_trio_deadlines()
