"""Bounded waits on the real clock, and running blocking calls from Trio tests.

Polling, because what the tests wait for changes in other processes, in grpcio's
threads or in asyncio callbacks, where no event of ours is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio


def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` (blocking); AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(0.01)


async def wait_until_async(predicate: Callable[[], bool], *, limit_s: float = 5.0) -> None:
    """Poll ``predicate`` from Trio (real clock); ``trio.TooSlowError`` after ``limit_s``."""
    with trio.fail_after(limit_s):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a worker thread."""
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))
