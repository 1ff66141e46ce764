"""An asyncpg pool on the trio-asyncio loop for tests: the shape of the fleet's engine.

:func:`open_test_engine` yields an object with ``await engine.run(fn, *args)`` (runs the
asyncio function ``fn(connection, *args)`` on a pooled connection), which is what the
telemetry store needs of the replication core's ``Engine`` (``EngineLike``). Needs a
trio-asyncio loop around it. Connects lazily: opening works while PostgreSQL is down.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import trio
import trio_asyncio

T = TypeVar("T")


class PoolEngine:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.calls = 0

    async def run(self, fn: Callable[..., Awaitable[T]], /, *args: Any) -> T:
        self.calls += 1
        return await trio_asyncio.aio_as_trio(self._call)(fn, *args)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            async with self._pool.acquire(timeout=2.0) as connection:
                return await fn(connection, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # Idle connections likely died with the failing one (a coroutine: asyncio side).
            await self._pool.expire_connections()
            raise


@contextlib.asynccontextmanager
async def open_test_engine(dsn: str, *, pool_size: int = 3) -> AsyncIterator[PoolEngine]:
    pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
        dsn, min_size=0, max_size=pool_size, timeout=2.0, command_timeout=10.0
    )
    try:
        yield PoolEngine(pool)
    finally:
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(2.0) as scope,
            contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError),
        ):
            await trio_asyncio.aio_as_trio(pool.close)()
        if scope.cancelled_caught:
            pool.terminate()
