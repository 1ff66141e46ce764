"""When the hot rules count as stale: too long since the last successful refresh.

The refresh state (the last success) lives in :class:`~.RefreshService`; the health
watcher, ``GetRefreshStatus`` and the metrics all judge it by these two functions, so
that they never disagree about whether the rules are stale.
"""

from __future__ import annotations

__all__ = ["STALENESS_INTERVALS", "is_stale", "staleness_limit"]

#: Without an explicit limit, rules are stale after this many refresh intervals
#: without a success: one missed scheduled refresh is not yet staleness, two are.
STALENESS_INTERVALS = 2


def staleness_limit(max_staleness_s: float, refresh_interval_s: float) -> float:
    """Seconds after the last success when the rules are stale.

    ``max_staleness_s`` when set (> 0); 0 means :data:`STALENESS_INTERVALS` times
    the refresh interval.
    """
    return max_staleness_s or STALENESS_INTERVALS * refresh_interval_s


def is_stale(last_success_ms: int, now_ms: int, limit_s: float) -> bool:
    """Never refreshed (``last_success_ms == 0``), or the last success is older than
    ``limit_s``. Times are wall-clock milliseconds since the epoch."""
    return last_success_ms == 0 or now_ms - last_success_ms > limit_s * 1000
