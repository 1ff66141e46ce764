"""A process-wide budget of request bytes held before their handler runs.

A call's request message is buffered whole before its handler sees it (grpclib reads
the 5-byte prefix, then the body of the declared length). A client that declares
large messages and then stalls, on many streams at once, makes the server hold all
of it: 100 bodies stalled at 3.9 MB each held 390 MB, for as long as the clients
kept their connections. :class:`ByteBudget` bounds the total: a body reserves its
declared length when its prefix arrives and gives it back once its handler may run
(or the call ends); a body that does not fit is refused at once.

Everything here is synchronous and single-threaded: the host calls it from asyncio
callbacks on the thread Trio runs on, and Trio tasks may wait on :attr:`released`.
"""

from __future__ import annotations

import logging

import trio_util

__all__ = ["ByteBudget"]

logger = logging.getLogger(__name__)


class ByteBudget:
    """At most ``limit`` bytes reserved at once; no waiting, a reservation fits or not.

    :attr:`released` counts every byte ever given back (it only grows), so that a
    task can notice when much memory was freed (see ``guardrefresh.app``, which then
    returns the heap's free pages to the OS).
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._limit = limit
        self._in_use = 0
        #: Bytes given back since the budget was made (monotonic).
        self.released: trio_util.AsyncValue[int] = trio_util.AsyncValue(0)

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        """Bytes reserved now."""
        return self._in_use

    def try_reserve(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit; whether they did. ``size`` 0 always fits."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if self._in_use + size > self._limit:
            return False
        self._in_use += size
        return True

    def release(self, size: int) -> None:
        """Give back ``size`` bytes reserved earlier (never more than are reserved)."""
        if not 0 <= size <= self._in_use:
            raise ValueError(f"cannot release {size} bytes; {self._in_use} are reserved")
        if size:
            self._in_use -= size
            self.released.value += size
