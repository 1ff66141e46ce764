"""Waking the host's Trio tasks when calls or connections end (in asyncio callbacks)."""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["Wakeup"]


class Wakeup:
    """A condition the host's Trio tasks wait on; :meth:`set` after any change.

    asyncio callbacks call :meth:`set` on the one thread both loops share; there is
    nothing to say about what changed: waiters look again.
    """

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true, looking again after each :meth:`set`."""
        while not predicate():
            self._event = trio.Event()
            await self._event.wait()
