"""A log line that a hostile client may trigger at will, at most once per interval."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LogThrottle"]


class LogThrottle:
    """Say whether a repeated log line may go out now, and how many were held back.

    The first event logs; after that at most one per ``interval_s`` seconds. Events
    in between are only counted: the next line that goes out reports them, so a
    flood of connections or accept errors costs one log line per interval, not one
    per event, and nothing goes uncounted. The clock is monotonic (the asyncio loop's
    exception handler may run outside Trio, where Trio's clock is not available).
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not interval_s >= 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s!r}")
        self._interval_s = interval_s
        self._clock = clock
        self._next_at: float | None = None
        self._held = 0

    def ready(self) -> int | None:
        """``None`` when this event is only counted; else how many were held back since
        the last line (log one now)."""
        now = self._clock()
        if self._next_at is not None and now < self._next_at:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next_at = now + self._interval_s
        return held

    @staticmethod
    def suffix(held: int) -> str:
        """``"; N more since the last report"`` or the empty string."""
        return f" ({held} more since the last report)" if held else ""
