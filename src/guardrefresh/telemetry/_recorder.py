"""The hand-over from Enforce to the writer: a bounded queue that never blocks.

:meth:`TelemetryRecorder.record` runs on the request path (the Trio thread): it appends
to a deque and returns, O(1), no lock, no I/O. When the queue is full the session is
dropped and counted. The writer thread takes sessions off the other end.
"""

from __future__ import annotations

import collections
import threading
from typing import Final

from ._defaults import QUEUE_CAPACITY
from ._session import EnforcementSession

__all__ = ["DEFAULT_QUEUE_CAPACITY", "TelemetryRecorder"]

#: The ``[telemetry] queue_size`` setting's default.
DEFAULT_QUEUE_CAPACITY: Final = QUEUE_CAPACITY


class TelemetryRecorder:
    """A bounded single-producer queue of finished sessions.

    ``record`` is meant for one thread (the Trio thread, where every Enforce call
    ends); the writer thread consumes. ``deque.append``/``popleft`` are atomic under the
    GIL, so neither side takes a lock; the events only wake the writer.
    """

    def __init__(self, capacity: int = DEFAULT_QUEUE_CAPACITY, *, batch_size: int = 2000) -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be >= 1")
        self.capacity = capacity
        self.batch_size = batch_size
        self._queue: collections.deque[EnforcementSession] = collections.deque()
        #: Set when the queue goes from empty to non-empty (and on close).
        self.wake = threading.Event()
        #: Set when a whole batch is waiting (and on close): no need to wait out the window.
        self.batch_ready = threading.Event()
        self._accepted = 0
        self._dropped_full = 0
        self._dropped_closed = 0
        self._closed = False

    def record(self, session: EnforcementSession) -> bool:
        """Queue ``session`` for the writer; False (and counted) if it was dropped.

        Never blocks and never raises for a full queue or a closed recorder.
        """
        if self._closed:
            self._dropped_closed += 1
            return False
        queue = self._queue
        depth = len(queue)
        if depth >= self.capacity:
            self._dropped_full += 1
            return False
        queue.append(session)
        self._accepted += 1
        if depth == 0:
            self.wake.set()
        elif depth + 1 == self.batch_size:
            self.batch_ready.set()
        return True

    def take(self, limit: int) -> list[EnforcementSession]:
        """Up to ``limit`` sessions, oldest first (writer side)."""
        queue = self._queue
        out: list[EnforcementSession] = []
        while queue and len(out) < limit:
            out.append(queue.popleft())
        return out

    def close(self) -> None:
        """From now on sessions are dropped (the writer has flushed and stopped)."""
        self._closed = True
        self.wake.set()
        self.batch_ready.set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def depth(self) -> int:
        """Sessions waiting for the writer."""
        return len(self._queue)

    @property
    def accepted(self) -> int:
        """Sessions queued since start."""
        return self._accepted

    @property
    def dropped(self) -> int:
        """Sessions refused because the queue was full or the recorder closed."""
        return self._dropped_full + self._dropped_closed
