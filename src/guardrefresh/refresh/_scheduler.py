"""The periodic refresh loop: :class:`RefreshScheduler` and its :class:`SchedulerStatus`."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import NoReturn

import attrs
import trio
import trio_util

from ._config import SchedulerConfig
from ._errors import RefreshError
from ._protocol import Refresher
from ._stats import RefreshStats, RefreshTrigger

__all__ = ["RefreshScheduler", "SchedulerStatus"]

logger = logging.getLogger(__name__)

# A module-level instance rather than a call in the signature: the config is frozen,
# so sharing one default between schedulers is safe.
_DEFAULT_CONFIG = SchedulerConfig()


@attrs.frozen(kw_only=True)
class SchedulerStatus:
    """Snapshot of a :class:`RefreshScheduler`, for health endpoints and logs."""

    enabled: bool
    #: Between ``task_status.started()`` and the end of :meth:`RefreshScheduler.run`.
    running: bool
    #: Wall clock ms of the last successful refresh of any trigger; 0 = never.
    last_success_ms: int
    #: Wall clock ms of the next planned periodic refresh; 0 = none planned
    #: (disabled, not running, or a periodic refresh is in progress).
    next_refresh_ms: int
    consecutive_failures: int
    #: Why the last attempt failed; "" when it succeeded.
    last_error: str
    #: The base interval, or longer when refreshes are slow (see ``max_duty_cycle``).
    current_interval_s: float
    #: The current retry wait (before jitter) after failures; 0 when healthy.
    backoff_s: float
    last_stats: RefreshStats | None


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _event_driven_other_than(
    seen: RefreshStats | None,
) -> Callable[[RefreshStats | None], bool]:
    def predicate(stats: RefreshStats | None) -> bool:
        return (
            stats is not None and stats is not seen and stats.trigger is not RefreshTrigger.PERIODIC
        )

    return predicate


class RefreshScheduler:
    """Refreshes the hot cache every ``config.refresh_interval`` seconds, adaptively.

    - Waits are jittered (``config.jitter``) with draws from ``rng`` and run on
      Trio's clock; timestamps (:meth:`last_refresh`, :meth:`next_refresh_at`)
      come from ``wall_clock`` (seconds since the epoch).
    - A successful refresh the scheduler did not start (RPC, manual, …; seen
      through ``refresher.last_stats``) counts as a periodic one: the next
      periodic refresh moves to a full interval after it and backoff resets.
    - After a failure it retries after ``backoff_initial`` seconds, doubling per
      consecutive failure up to the current interval.
    - When full refreshes are slow the interval stretches to
      ``duration / max_duty_cycle``, at most ``max_interval``.

    The warm-up refresh (``config.refresh_on_start``) is the application's job;
    when one already happened, :meth:`last_refresh` reports it.
    """

    def __init__(
        self,
        refresher: Refresher,
        config: SchedulerConfig = _DEFAULT_CONFIG,
        *,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._refresher = refresher
        self._config = config
        self._rng = rng if rng is not None else random.Random()
        self._wall_clock = wall_clock
        # Created up front so stop() works before run(), even before Trio runs.
        self._cancel_scope = trio.CancelScope()
        self._run_called = False
        self._running = False
        # Trio-clock deadline of the next periodic refresh; the loop re-reads it
        # whenever it changes, so event-driven refreshes can push it back.
        self._deadline: trio_util.AsyncValue[float] = trio_util.AsyncValue(math.inf)
        self._consecutive_failures = 0
        self._last_error = ""
        self._backoff_s = 0.0
        self._current_interval_s = config.refresh_interval
        self._last_refresh_ms: trio_util.AsyncValue[int] = trio_util.AsyncValue(0)
        self._next_refresh_ms: trio_util.AsyncValue[int] = trio_util.AsyncValue(0)
        self._adopt_existing_stats()

    @property
    def config(self) -> SchedulerConfig:
        return self._config

    @property
    def last_refresh_ms(self) -> trio_util.AsyncValue[int]:
        """Observable :meth:`last_refresh`: wall ms of the last success, 0 = never."""
        return self._last_refresh_ms

    @property
    def next_refresh_ms(self) -> trio_util.AsyncValue[int]:
        """Observable :meth:`next_refresh_at`: wall ms of the next planned refresh, 0 = none."""
        return self._next_refresh_ms

    def last_refresh(self) -> int:
        """Wall clock ms of the last successful refresh of any trigger; 0 = never."""
        value: int = self._last_refresh_ms.value
        return value

    def next_refresh_at(self) -> int:
        """Wall clock ms of the next planned periodic refresh; 0 = none planned."""
        value: int = self._next_refresh_ms.value
        return value

    def status(self) -> SchedulerStatus:
        return SchedulerStatus(
            enabled=self._config.enabled,
            running=self._running,
            last_success_ms=self.last_refresh(),
            next_refresh_ms=self.next_refresh_at(),
            consecutive_failures=self._consecutive_failures,
            last_error=self._last_error,
            current_interval_s=self._current_interval_s,
            backoff_s=self._backoff_s,
            last_stats=self._refresher.last_stats.value,
        )

    def stop(self) -> None:
        """Make :meth:`run` return promptly (and normally).

        Idempotent; safe before, during and after :meth:`run`. A periodic
        refresh in flight is cancelled; the refresher guarantees that leaves
        the hot cache unchanged.
        """
        self._cancel_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the periodic refresh loop until :meth:`stop`; for ``nursery.start``.

        When disabled, reports started and returns at once. Otherwise reports
        started once the first refresh is planned (one jittered interval from
        now) and loops. A failed refresh (:class:`RefreshError` or any other
        :class:`Exception`) is logged and retried with backoff; it never ends
        the loop.

        Returns normally after :meth:`stop`. If the caller's scope is cancelled,
        :class:`trio.Cancelled` propagates as usual. May be called once.
        """
        if self._run_called:
            raise RuntimeError("RefreshScheduler.run() may only be called once")
        self._run_called = True
        config = self._config
        if not config.enabled:
            logger.info("Scheduled refresh is disabled, skipping")
            task_status.started()
            return
        logger.info(
            "Starting scheduled refresh with %s second interval",
            _format_seconds(config.refresh_interval),
        )
        # The warm-up refresh may have completed after __init__.
        self._adopt_existing_stats()
        self._running = True
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        self._follow_other_refreshes, self._refresher.last_stats.value
                    )
                    self._plan(self._jittered(self._current_interval_s))
                    task_status.started()
                    await self._loop()
        finally:
            self._running = False
            self._deadline.value = math.inf
            self._next_refresh_ms.value = 0
        logger.info("Scheduled refresh stopped")

    async def _loop(self) -> NoReturn:
        while True:
            await self._sleep_until_due()
            # Nothing is planned while the refresh runs; completion plans the next one.
            self._deadline.value = math.inf
            self._next_refresh_ms.value = 0
            try:
                stats = await self._refresher.refresh(trigger=RefreshTrigger.PERIODIC)
            except Exception as exc:  # never let one bad refresh end the schedule
                self._record_failure(exc)
            else:
                logger.info(
                    "Scheduled refresh completed: %d rules refreshed in %dms",
                    stats.rules_refreshed,
                    round(stats.duration_ms),
                    extra={
                        "rules": stats.rules_refreshed,
                        "duration_ms": round(stats.duration_ms, 3),
                        "trigger": str(stats.trigger),
                    },
                )
                self._record_success(stats)

    async def _sleep_until_due(self) -> None:
        while True:
            with trio.move_on_at(self._deadline.value) as due:
                await self._deadline.wait_transition()
            if due.cancelled_caught:
                return

    async def _follow_other_refreshes(self, seen: RefreshStats | None) -> None:
        # Level-triggered against the value run() saw, so a refresh that lands
        # before this task first parks is not missed; and a later PERIODIC value
        # cannot hide an event-driven one, since only a match is recorded.
        last_stats = self._refresher.last_stats
        while True:
            stats: RefreshStats = await last_stats.wait_value(_event_driven_other_than(seen))
            seen = stats
            logger.debug(
                "%s refresh completed; next scheduled refresh in a full interval", stats.trigger
            )
            self._record_success(stats)

    def _adopt_existing_stats(self) -> None:
        stats = self._refresher.last_stats.value
        if stats is None or stats.timestamp_ms <= self._last_refresh_ms.value:
            return
        # Not witnessed by the scheduler, so the refresher's own timestamp is the truth.
        self._last_refresh_ms.value = stats.timestamp_ms
        self._adapt_interval(stats)

    def _record_success(self, stats: RefreshStats) -> None:
        self._consecutive_failures = 0
        self._last_error = ""
        self._backoff_s = 0.0
        self._last_refresh_ms.value = round(self._wall_clock() * 1000)
        self._adapt_interval(stats)
        self._plan(self._jittered(self._current_interval_s))

    def _record_failure(self, exc: Exception) -> None:
        self._consecutive_failures += 1
        if isinstance(exc, RefreshError):
            self._last_error = str(exc) or "RefreshError"
            logger.warning(
                "Scheduled refresh failed: %s",
                self._last_error,
                extra={"trigger": "periodic", "error": self._last_error},
            )
        else:
            # Not a reported refresh failure: a bug somewhere, so keep the traceback.
            self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            logger.warning("Scheduled refresh failed: %s", self._last_error, exc_info=exc)
        # Doubling the previous wait, not 2**failures: no overflow on a long streak.
        backoff = self._config.backoff_initial if self._backoff_s == 0 else self._backoff_s * 2
        self._backoff_s = min(backoff, self._current_interval_s)
        self._plan(self._jittered(self._backoff_s))

    def _adapt_interval(self, stats: RefreshStats) -> None:
        # A partial refresh says little about what a full (periodic) one costs.
        if stats.families:
            return
        config = self._config
        wanted = (stats.duration_ms / 1000) / config.max_duty_cycle
        interval = min(config.max_interval, max(config.refresh_interval, wanted))
        if interval != self._current_interval_s:
            logger.info(
                "Refresh took %.1f s; scheduled refresh interval is now %s seconds "
                "(max duty cycle %g)",
                stats.duration_ms / 1000,
                _format_seconds(interval),
                config.max_duty_cycle,
            )
            self._current_interval_s = interval

    def _jittered(self, seconds: float) -> float:
        jitter = self._config.jitter
        if jitter == 0:
            return seconds
        return self._rng.uniform(seconds * (1 - jitter), seconds * (1 + jitter))

    def _plan(self, delay: float) -> None:
        self._deadline.value = trio.current_time() + delay
        self._next_refresh_ms.value = round((self._wall_clock() + delay) * 1000)
