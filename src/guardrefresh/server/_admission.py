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
- Connections the host has *demoted* (``demoted(key)`` true: one of their calls was
  shed lately, see ``_intake.ShedBackoff``) come after all others: a freed slot goes
  to the first connection in turn that is not demoted, if any; and in a full queue a
  demoted connection counts as busier than any that is not. A flooder held to one
  stream is then no rival for a client that never flooded, however many of its
  connections wait. Demoted connections together hold at most ``max_demoted`` slots
  (a quarter by default, see :data:`DEMOTED_SHARE`).

Runs on the asyncio side (grpclib's handlers are asyncio tasks); single-threaded, no
locks. Health and reflection calls never come here: the host exempts them.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Callable, Hashable

import attrs

__all__ = [
    "DEMOTED_SHARE",
    "QUEUED_PER_RUNNING",
    "RUNNING_PER_CPU",
    "Admission",
    "AdmissionRefused",
    "default_max_demoted",
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
#: Demoted connections share at most 1/DEMOTED_SHARE of the run slots. Every running
#: call has its callbacks in the event loop's one queue (first in, first out), which
#: every other call's steps, health checks and new connections included, waits
#: behind: with 16 flooders' GetRuleStats running, a health check's four or five
#: passes through the loop took up to 0.5 s; with 4, under 0.2 s (bench/README.md).
#: The server stays as busy (flooders' calls are cheap to keep waiting), but its queue
#: of ready work stays short.
DEMOTED_SHARE = 4


def default_max_running(cpus: int | None = None) -> int:
    """Run slots for a machine of ``cpus`` CPUs (default: the CPUs this process may use)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return RUNNING_PER_CPU * max(1, cpus or 1)


def default_max_demoted(max_running: int) -> int:
    """Run slots demoted connections may hold at once, of ``max_running``."""
    return max(1, max_running // DEMOTED_SHARE)


def default_max_queued(max_running: int) -> int:
    """Queue length for ``max_running`` run slots."""
    return QUEUED_PER_RUNNING * max_running


class AdmissionRefused(Exception):
    """The call may not run now: the server is at capacity; ``str()`` says why."""


@attrs.define(eq=False)
class _Line:
    """The waiting calls of one connection, oldest first."""

    key: Hashable
    waiters: collections.deque[asyncio.Future[bool]] = attrs.Factory(collections.deque)


class Admission:
    """At most ``max_running`` calls hold a slot; at most ``max_queued`` wait for one.

    :meth:`acquire` takes a slot (waiting in line if need be); :meth:`release` gives
    it back. Both are for asyncio tasks on the host's loop.
    """

    def __init__(
        self,
        max_running: int,
        max_queued: int,
        *,
        demoted: Callable[[Hashable], bool] | None = None,
        max_demoted: int | None = None,
    ) -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        self._max_running = max_running
        self._max_queued = max_queued
        self._demoted = demoted
        if max_demoted is None:
            max_demoted = default_max_demoted(max_running)
        if not 1 <= max_demoted <= max_running:
            raise ValueError(f"max_demoted must be in 1..max_running, got {max_demoted}")
        self._max_demoted = max_demoted
        self._running_demoted = 0
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
    def max_demoted(self) -> int:
        return self._max_demoted

    @property
    def running_demoted(self) -> int:
        """Slots held by demoted connections now."""
        return self._running_demoted

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

    def try_acquire(self, key: Hashable) -> bool | None:
        """Take a run slot for a call of connection ``key`` if one is free for it now:
        whether it is a demoted connection's slot (as :meth:`acquire`), or None when
        the call would have to wait (nothing is taken then)."""
        demoted = self._is_demoted(key)
        if self._running < self._max_running and (
            not demoted or (not self._queued and self._running_demoted < self._max_demoted)
        ):
            # A free slot with calls waiting means only demoted ones wait, at their cap.
            self._running += 1
            self._running_demoted += demoted
            return demoted
        return None

    async def acquire(self, key: Hashable) -> bool:
        """Take a run slot for a call of connection ``key``, waiting in line if need be;
        returns whether it is a demoted connection's slot (pass that to :meth:`release`).

        Raises :exc:`AdmissionRefused` at once when the queue is full and ``key``
        is at least as busy as every connection with a call waiting, or later when a
        call of a less busy connection took this one's place. If cancelled
        while waiting, the call leaves the line and holds no slot; if cancelled just
        as its turn came, the slot passes on.
        """
        demoted = self.try_acquire(key)
        if demoted is not None:
            return demoted
        if self._queued >= self._max_queued:
            self._displace_for(key)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line(key)
            self._turns.append(line)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._push(line, future)
        try:
            return await future
        except BaseException:
            if future.cancelled():
                self._remove(line, future)  # still in line: nobody else touched it
            elif future.exception() is None:
                self.release(future.result())  # granted, but the call is gone: pass it on
            raise

    def release(self, demoted: bool = False) -> None:
        """Give back a slot taken by :meth:`acquire` (``demoted``: what it returned).

        The next connection in turn gets it: the first one not demoted, if any; else
        the first demoted one, unless demoted connections hold ``max_demoted`` slots.
        """
        if self._running <= 0 or (demoted and self._running_demoted <= 0):
            raise RuntimeError("release() without a slot held")
        self._running_demoted -= demoted
        while self._turns:
            line = self._next_line()
            if line is None:
                break  # only demoted connections wait, and they hold their share
            future = self._pop_oldest(line)
            if line.waiters:
                self._turns.append(line)
            if not future.done():
                granted = self._is_demoted(line.key)
                self._running_demoted += granted
                future.set_result(granted)  # the slot changes hands: running stays the same
                return
        self._running -= 1

    # ----------------------------------------------------------------- lines ---

    def _is_demoted(self, key: Hashable) -> bool:
        return self._demoted is not None and self._demoted(key)

    def _next_line(self) -> _Line | None:
        """Take the next line in turn off :attr:`_turns`: the first not demoted, if any;
        else the first, if demoted connections may take one more slot; else None."""
        turns = self._turns
        if self._demoted is not None:
            for index, line in enumerate(turns):
                if not self._demoted(line.key):
                    del turns[index]
                    return line
            if self._running_demoted >= self._max_demoted:
                return None
        return turns.popleft()

    def _business(self, line: _Line) -> tuple[bool, int, int]:
        return self._is_demoted(line.key), self._load.get(line.key, 0), len(line.waiters)

    def _displace_for(self, key: Hashable) -> None:
        """Make room for one call of connection ``key``, or refuse it."""
        # As it would be with this call waiting too: equals never displace each other.
        mine = (self._is_demoted(key), self._load.get(key, 0), self.waiting(key) + 1)
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

    def _push(self, line: _Line, future: asyncio.Future[bool]) -> None:
        line.waiters.append(future)
        self._queued += 1

    def _pop_oldest(self, line: _Line) -> asyncio.Future[bool]:
        self._queued -= 1
        future = line.waiters.popleft()
        if not line.waiters:
            del self._lines[line.key]
        return future

    def _remove(self, line: _Line, future: asyncio.Future[bool]) -> None:
        if future not in line.waiters:
            return  # release() or a displacement took it out already
        self._queued -= 1
        line.waiters.remove(future)
        if not line.waiters:
            del self._lines[line.key]
            self._turns.remove(line)
