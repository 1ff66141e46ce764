"""Admission control: a cap on RPCs running at once, shared fairly between connections.

Without it every call a client sends runs at once: 500 connections x 50 streams of
GetRuleStats all ran, and a fresh client's call waited behind the 25,000 others
(median 3.1 s). :class:`Admission` lets ``max_running`` calls run; up to
``max_queued`` more wait, and the rest are refused at once (the host answers
RESOURCE_EXHAUSTED), so that a flood costs the server little and its own clients
learn to back off.

Fairness is per connection (an HTTP/2 connection is the unit a client controls):

- Waiting calls are kept in one queue per connection, and a freed slot goes to the
  connections in turn (round robin), the oldest call of each first. A connection
  with 50 calls waiting gets one turn per round, as does one with a single call.
- When the queue is full, a call from a connection with fewer calls in progress (from
  its headers to its end: being received, waiting or running; see :meth:`enter`) than
  the busiest connection with a call waiting takes the place of that connection's
  newest waiting call, which is refused instead; otherwise it is refused itself. So a
  connection that floods is the one shed, and a connection sending one request at a
  time always gets in line. Between connections equally busy nothing moves (no churn).

Runs on the asyncio side (grpclib's handlers are asyncio tasks); single-threaded, no
locks. Health and reflection calls never come here: the host exempts them.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Hashable

import attrs

__all__ = [
    "QUEUED_PER_RUNNING",
    "RUNNING_PER_CPU",
    "Admission",
    "AdmissionRefused",
    "default_max_queued",
    "default_max_running",
]

#: Default run slots per CPU. Handlers run on the one thread of the event loop, so
#: more slots do not buy more CPU for them; what they buy is overlap for the calls
#: that wait on worker threads (an install's fsync, a refresh's load), which the
#: storage batches. Eight per CPU keeps the disk and every core busy, and bounds the
#: memory held by calls in progress.
RUNNING_PER_CPU = 8
#: Default queue length, in multiples of the run slots. A call at the back of a full
#: queue waits for this many rounds of the running calls: 4 x 16 GetRuleStats of
#: 3-4 ms each is about 0.25 s on a 2-CPU machine.
QUEUED_PER_RUNNING = 4


def default_max_running(cpus: int | None = None) -> int:
    """Run slots for a machine of ``cpus`` CPUs (default: the CPUs this process may use)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return RUNNING_PER_CPU * max(1, cpus or 1)


def default_max_queued(max_running: int) -> int:
    """Queue length for ``max_running`` run slots."""
    return QUEUED_PER_RUNNING * max_running


class AdmissionRefused(Exception):
    """The call may not run now: the server is at capacity; ``str()`` says why."""


@attrs.define(eq=False)
class _Line:
    """The waiting calls of one connection, oldest first."""

    key: Hashable
    waiters: collections.deque[asyncio.Future[None]] = attrs.Factory(collections.deque)


class Admission:
    """At most ``max_running`` calls hold a slot; at most ``max_queued`` wait for one.

    :meth:`acquire` takes a slot (waiting in line if need be); :meth:`release` gives
    it back. Both are for asyncio tasks on the host's loop.
    """

    def __init__(self, max_running: int, max_queued: int) -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        self._max_running = max_running
        self._max_queued = max_queued
        self._running = 0
        self._queued = 0
        self._lines: dict[Hashable, _Line] = {}
        #: Connections with calls waiting, in turn order; each appears once.
        self._turns: collections.deque[_Line] = collections.deque()
        #: Calls in progress per connection (between enter() and leave()).
        self._load: dict[Hashable, int] = {}
        #: Calls refused so far (on arrival or displaced from the queue).
        self.refused = 0

    @property
    def max_running(self) -> int:
        return self._max_running

    @property
    def max_queued(self) -> int:
        return self._max_queued

    @property
    def running(self) -> int:
        """Slots held now."""
        return self._running

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return self._queued

    def enter(self, key: Hashable) -> None:
        """A call of connection ``key`` has begun (its headers came); pair with :meth:`leave`."""
        self._load[key] = self._load.get(key, 0) + 1

    def leave(self, key: Hashable) -> None:
        """A call of connection ``key`` has ended."""
        load = self._load[key] - 1
        if load:
            self._load[key] = load
        else:
            del self._load[key]

    def load(self, key: Hashable) -> int:
        """Calls of connection ``key`` in progress now."""
        return self._load.get(key, 0)

    def waiting(self, key: Hashable) -> int:
        """Calls of connection ``key`` waiting for a slot now."""
        line = self._lines.get(key)
        return len(line.waiters) if line is not None else 0

    async def acquire(self, key: Hashable) -> None:
        """Take a run slot for a call of connection ``key``, waiting in line if need be.

        Raises :exc:`AdmissionRefused` at once when the queue is full and ``key``
        is at least as busy as every connection with a call waiting, or later when a
        call of a less busy connection took this one's place. If cancelled
        while waiting, the call leaves the line and holds no slot; if cancelled just
        as its turn came, the slot passes on.
        """
        if self._running < self._max_running and not self._queued:
            self._running += 1
            return
        if self._queued >= self._max_queued:
            self._displace_for(key)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line(key)
            self._turns.append(line)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._push(line, future)
        try:
            await future
        except BaseException:
            if future.cancelled():
                self._remove(line, future)  # still in line: nobody else touched it
            elif future.exception() is None:
                self.release()  # granted, but the call is gone: pass the slot on
            raise

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire`; the next connection in turn gets it."""
        if self._running <= 0:
            raise RuntimeError("release() without a slot held")
        while self._turns:
            line = self._turns.popleft()
            future = self._pop_oldest(line)
            if line.waiters:
                self._turns.append(line)
            if not future.done():
                future.set_result(None)  # the slot changes hands: running stays the same
                return
        self._running -= 1

    # ----------------------------------------------------------------- lines ---

    def _business(self, line: _Line) -> tuple[int, int]:
        return self._load.get(line.key, 0), len(line.waiters)

    def _displace_for(self, key: Hashable) -> None:
        """Make room for one call of connection ``key``, or refuse it."""
        # As it would be with this call waiting too: equals never displace each other.
        mine = (self._load.get(key, 0), self.waiting(key) + 1)
        victim = max(self._turns, key=self._business, default=None)
        if victim is None or self._business(victim) <= mine or victim.key == key:
            self.refused += 1
            raise AdmissionRefused(
                f"server at capacity: {self._running} calls running, {self._queued} waiting"
            )
        future = victim.waiters[-1]
        self._remove(victim, future)
        self.refused += 1
        if future.done():
            return  # cancelled already (its task has not run yet): the room is made anyway
        future.set_exception(
            AdmissionRefused(
                f"server at capacity: {self._running} calls running, {self._queued + 1} "
                "waiting; this connection was the busiest"
            )
        )

    def _push(self, line: _Line, future: asyncio.Future[None]) -> None:
        line.waiters.append(future)
        self._queued += 1

    def _pop_oldest(self, line: _Line) -> asyncio.Future[None]:
        self._queued -= 1
        future = line.waiters.popleft()
        if not line.waiters:
            del self._lines[line.key]
        return future

    def _remove(self, line: _Line, future: asyncio.Future[None]) -> None:
        if future not in line.waiters:
            return  # release() or a displacement took it out already
        self._queued -= 1
        line.waiters.remove(future)
        if not line.waiters:
            del self._lines[line.key]
            self._turns.remove(line)
