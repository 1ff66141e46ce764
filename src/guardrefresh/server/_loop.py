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
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio_asyncio

__all__ = ["MAX_BATCH", "batch_callbacks", "open_asyncio_loop"]

logger = logging.getLogger(__name__)

#: Callbacks one pass of the loop task may run before Trio's other tasks get a turn.
#: A few concurrent calls' worth; bounds how long a storm of asyncio callbacks can keep
#: Trio's tasks (the refresher, the signal handler) waiting.
MAX_BATCH = 64


@asynccontextmanager
async def open_asyncio_loop() -> AsyncIterator[trio_asyncio.TrioEventLoop]:
    """``trio_asyncio.open_loop()`` with :func:`batch_callbacks` applied.

    Behaves as ``trio_asyncio.open_loop()`` does on cancellation and errors, and on exit
    runs the callbacks still queued, then closes the loop.
    """
    async with trio_asyncio.open_loop() as loop:
        batch_callbacks(loop)
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
