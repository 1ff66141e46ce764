"""Give memory back to the OS after a burst of requests has passed.

Calls in progress hold memory the allocator keeps once they end: each call about
17 KB (grpclib's stream, buffers, events, the handler task), each request body being
received its bytes, in blocks of up to 16 KiB (one DATA frame each). After a burst
(a flood of calls, or 16 stalled bodies of 3.9 MB: +62 MB), the freed blocks stay
resident as holes in the heap: glibc only returns free memory at the top of a heap.
:func:`trim_after_request_bursts` calls ``malloc_trim`` (see
:func:`~._memory.release_free_memory`) once such a burst is over.

Python's small objects live in 1 MiB arenas that go back to the OS only once wholly
empty, so the few objects a burst leaves behind can keep dozens of them resident: the
trim first drops what only bookkeeping still holds (closed connections' handlers, stale
deadline and timer entries, grown containers) before it collects and trims.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable

import trio
import trio_util

from ..server import forget_stale_deadlines
from ._memory import release_free_memory

__all__ = [
    "TRIM_AFTER_BYTES",
    "TRIM_AFTER_CALLS",
    "trim_after_request_bursts",
]

logger = logging.getLogger(__name__)

#: Request-body bytes given back since the last trim that make a burst.
TRIM_AFTER_BYTES = 16 * 1024 * 1024
#: Calls ended since the last trim that make a burst (about 20 MB of streams).
TRIM_AFTER_CALLS = 1000
#: A burst is over once at most this many calls are in progress ...
QUIET_CALLS = 16
#: ... as seen this long apart (twice in a row).
SETTLE_S = 1.0


async def trim_after_request_bursts(
    bytes_released: trio_util.AsyncValue[int],
    calls_ended: trio_util.AsyncValue[int],
    calls_in_progress: Callable[[], int],
    forget_closed_connections: Callable[[], None],
) -> None:
    """Run forever: after each burst, once the server is quiet, return free heap pages.

    A burst is :data:`TRIM_AFTER_BYTES` request bytes or :data:`TRIM_AFTER_CALLS`
    calls since the last trim; quiet is at most :data:`QUIET_CALLS` calls in progress
    at two checks :data:`SETTLE_S` apart. So a steady load never trims (its pages would
    only be faulted in again), and an idle service never wakes up. Then it calls
    ``forget_closed_connections()`` and :func:`forget_stale_deadlines`, runs the cyclic GC (the calls of a lost connection
    are freed only by it) and trims in a worker thread. Cancellation ends the loop (a trim already running finishes).
    """
    while True:
        bytes_mark = bytes_released.value
        calls_mark = calls_ended.value
        await trio_util.wait_any(
            _grown(bytes_released, bytes_mark + TRIM_AFTER_BYTES),
            _grown(calls_ended, calls_mark + TRIM_AFTER_CALLS),
        )
        quiet_checks = 0
        while quiet_checks < 2:
            await trio.sleep(SETTLE_S)
            quiet_checks = quiet_checks + 1 if calls_in_progress() <= QUIET_CALLS else 0
        # What the server kept of closed connections holds the burst's calls, in
        # reference cycles: drop it, collect it, then return the freed pages.
        forget_closed_connections()
        forget_stale_deadlines()
        collected = gc.collect()
        released = await trio.to_thread.run_sync(release_free_memory)
        logger.debug(
            "after %d calls and %d request bytes: %d objects collected, free heap pages "
            "returned to the OS: %s",
            calls_ended.value - calls_mark,
            bytes_released.value - bytes_mark,
            collected,
            released,
        )


def _grown(value: trio_util.AsyncValue[int], target: int) -> Callable[[], Awaitable[object]]:
    """An async callable that returns once ``value`` has reached ``target``."""

    async def wait() -> None:
        await value.wait_value(lambda v: v >= target)

    return wait
