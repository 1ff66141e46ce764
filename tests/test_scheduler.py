"""RefreshScheduler under Trio's autojump clock, driving a fake Refresher.

All times are virtual: assertions on ``trio.current_time()`` are exact.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_util

from guardrefresh.refresh import (
    RefreshError,
    RefreshScheduler,
    RefreshStats,
    RefreshTrigger,
    SchedulerConfig,
    SchedulerStatus,
)

LOGGER = "guardrefresh.refresh._scheduler"
WALL0 = 1_700_000_000.0  # fake wall clock at virtual time 0
DAY = 86400.0
SIX_HOURS = 21600.0


def fake_wall() -> float:
    return WALL0 + trio.current_time()


def wall_ms_at(virtual_time: float) -> int:
    return round((WALL0 + virtual_time) * 1000)


class FakeRefresher:
    """A Refresher whose outcome, duration and latency the test controls."""

    def __init__(self, initial: RefreshStats | None = None) -> None:
        self._last_stats: trio_util.AsyncValue[RefreshStats | None] = trio_util.AsyncValue(initial)
        self.calls: list[tuple[float, RefreshTrigger]] = []
        self.call_count = trio_util.AsyncValue(0)
        self.done_count = trio_util.AsyncValue(0)
        # Raised, in order, by the next calls; then calls succeed.
        self.failures: list[Exception] = []
        self.delay = 0.0  # virtual seconds each call takes
        self.duration_ms = 45.0  # what the stats report
        self.rules = 1234
        self._version = 0

    @property
    def last_stats(self) -> trio_util.AsyncValue[RefreshStats | None]:
        return self._last_stats

    def periodic_call_times(self) -> list[float]:
        return [t for t, trigger in self.calls if trigger is RefreshTrigger.PERIODIC]

    async def refresh(
        self, families: Sequence[str] = (), *, trigger: RefreshTrigger = RefreshTrigger.MANUAL
    ) -> RefreshStats:
        self.calls.append((trio.current_time(), trigger))
        self.call_count.value += 1
        if self.delay:
            await trio.sleep(self.delay)
        else:
            await trio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)
        self._version += 1  # keeps consecutive stats distinct for AsyncValue
        stats = RefreshStats(
            rules_refreshed=self.rules,
            duration_ms=self.duration_ms,
            timestamp_ms=round(fake_wall() * 1000),
            trigger=trigger,
            families=tuple(families),
            bridge_version=self._version,
        )
        self._last_stats.value = stats
        self.done_count.value += 1
        return stats


def make(
    config: SchedulerConfig | None = None,
    *,
    refresher: FakeRefresher | None = None,
    rng: random.Random | None = None,
    **changes: float,
) -> tuple[RefreshScheduler, FakeRefresher]:
    if config is None:
        config = SchedulerConfig(jitter=0.0, **changes)  # type: ignore[arg-type]
    fake = refresher if refresher is not None else FakeRefresher()
    scheduler = RefreshScheduler(fake, config, rng=rng, wall_clock=fake_wall)
    return scheduler, fake


@asynccontextmanager
async def running(scheduler: RefreshScheduler) -> AsyncIterator[trio.Nursery]:
    """Start the scheduler; on exit stop it and check run() returned within 1 virtual second."""
    with trio.CancelScope() as guard:
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            yield nursery
            await trio.testing.wait_all_tasks_blocked()
            scheduler.stop()
            stopped_at = trio.current_time()
            guard.deadline = stopped_at + 1.0
    assert not guard.cancelled_caught, "run() did not return within 1 s of stop()"
    assert trio.current_time() - stopped_at <= 1.0


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)


# --- the schedule -------------------------------------------------------------------------


async def test_a_day_has_exactly_four_refreshes_at_six_hour_marks(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    async with running(scheduler):
        t0 = trio.current_time()
        await trio.sleep(DAY + 1)
        assert fake.periodic_call_times() == [
            t0 + 21600,
            t0 + 43200,
            t0 + 64800,
            t0 + 86400,
        ]
        assert [trigger for _, trigger in fake.calls] == [RefreshTrigger.PERIODIC] * 4
        assert messages(caplog, logging.INFO)[0] == (
            "Starting scheduled refresh with 21600 second interval"
        )
        completed = [m for m in messages(caplog, logging.INFO) if "completed" in m]
        assert completed == ["Scheduled refresh completed: 1234 rules refreshed in 45ms"] * 4
        assert messages(caplog, logging.WARNING) == []


async def test_jittered_waits_stay_within_bounds_and_vary(
    autojump_clock: trio.testing.MockClock,
) -> None:
    interval, jitter, draws = 100.0, 0.2, 1000
    config = SchedulerConfig(refresh_interval=interval, jitter=jitter)
    scheduler, fake = make(config, rng=random.Random(2024))
    async with running(scheduler):
        t0 = trio.current_time()
        with trio.fail_after(interval * (1 + jitter) * (draws + 1)):
            await fake.call_count.wait_value(lambda n: n >= draws)
        times = [t0, *fake.periodic_call_times()]
    waits = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(waits) == draws
    low, high = interval * (1 - jitter), interval * (1 + jitter)
    # Float subtraction of virtual times can be off by an ulp or so.
    assert all(low - 1e-6 <= w <= high + 1e-6 for w in waits)
    assert min(waits) < low + 2 and max(waits) > high - 2
    # Each wait is exactly one draw from the injected rng, uniform over the range.
    replay = random.Random(2024)
    expected = [replay.uniform(low, high) for _ in range(draws)]
    assert waits == pytest.approx(expected, abs=1e-6)


async def test_next_refresh_at_is_wall_clock_plus_the_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = SchedulerConfig(refresh_interval=SIX_HOURS, jitter=0.1)
    scheduler, fake = make(config, rng=random.Random(7))
    replay = random.Random(7)
    first_wait = replay.uniform(SIX_HOURS * 0.9, SIX_HOURS * 1.1)
    second_wait = replay.uniform(SIX_HOURS * 0.9, SIX_HOURS * 1.1)
    fake.delay = 5.0
    assert scheduler.next_refresh_at() == 0  # nothing planned before run()
    async with running(scheduler):
        t0 = trio.current_time()
        assert scheduler.next_refresh_at() == wall_ms_at(t0 + first_wait)
        assert scheduler.next_refresh_ms.value == scheduler.next_refresh_at()
        assert scheduler.status().next_refresh_ms == scheduler.next_refresh_at()
        # While the refresh runs nothing is planned.
        await scheduler.next_refresh_ms.wait_value(0)
        assert trio.current_time() == pytest.approx(t0 + first_wait, abs=1e-9)
        planned = await scheduler.next_refresh_ms.wait_value(lambda v: v > 0)
        done = trio.current_time()
        assert done == pytest.approx(t0 + first_wait + 5.0, abs=1e-9)
        assert planned == scheduler.next_refresh_at() == wall_ms_at(done + second_wait)
    assert scheduler.next_refresh_at() == 0  # nothing planned once stopped
    assert fake.call_count.value == 1


async def test_last_refresh_is_observable(autojump_clock: trio.testing.MockClock) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    assert scheduler.last_refresh() == 0
    async with running(scheduler):
        t0 = trio.current_time()
        value = await scheduler.last_refresh_ms.wait_value(lambda v: v > 0)
        assert trio.current_time() == t0 + SIX_HOURS
        assert value == wall_ms_at(t0 + SIX_HOURS)
        assert scheduler.last_refresh() == value
        assert scheduler.status().last_success_ms == value
        await settle()
        assert scheduler.status().last_stats is fake.last_stats.value
        assert scheduler.status().last_stats is not None


async def test_warm_up_refresh_is_reported_and_first_periodic_is_one_interval_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    warm_up = RefreshStats(
        rules_refreshed=5000,
        duration_ms=45.0,
        timestamp_ms=1_699_999_999_000,
        trigger=RefreshTrigger.STARTUP,
    )
    scheduler, fake = make(refresher=FakeRefresher(initial=warm_up), refresh_interval=SIX_HOURS)
    assert scheduler.last_refresh() == warm_up.timestamp_ms
    async with running(scheduler):
        t0 = trio.current_time()
        assert scheduler.last_refresh() == warm_up.timestamp_ms
        status = scheduler.status()
        assert status.last_stats is warm_up
        assert status.running and status.enabled
        assert status.next_refresh_ms == wall_ms_at(t0 + SIX_HOURS)
        await trio.sleep(SIX_HOURS + 1)
        assert fake.periodic_call_times() == [t0 + SIX_HOURS]


async def test_warm_up_after_construction_but_before_run_is_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    await trio.sleep(5)
    warm_up = await fake.refresh(trigger=RefreshTrigger.STARTUP)
    assert warm_up.timestamp_ms == wall_ms_at(5)
    async with running(scheduler):
        t0 = trio.current_time()
        assert scheduler.last_refresh() == warm_up.timestamp_ms
        assert scheduler.last_refresh_ms.value == warm_up.timestamp_ms
        await trio.sleep(SIX_HOURS + 1)
    assert fake.periodic_call_times() == [t0 + SIX_HOURS]


async def test_slow_warm_up_stretches_the_first_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    warm_up = RefreshStats(
        rules_refreshed=100_000,
        duration_ms=400_000.0,
        timestamp_ms=1_699_999_999_000,
        trigger=RefreshTrigger.STARTUP,
    )
    scheduler, fake = make(refresher=FakeRefresher(initial=warm_up), refresh_interval=SIX_HOURS)
    async with running(scheduler):
        t0 = trio.current_time()
        assert scheduler.status().current_interval_s == 40000.0
        await trio.sleep(40001)
        assert fake.periodic_call_times() == [t0 + 40000]


# --- failures and backoff -----------------------------------------------------------------


async def test_failures_back_off_exponentially_then_success_resets(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    fake.failures = [RefreshError("checksum mismatch in anchors.bin") for _ in range(4)]
    async with running(scheduler):
        t0 = trio.current_time()
        for failures, backoff in enumerate([30.0, 60.0, 120.0, 240.0], start=1):
            await fake.call_count.wait_value(failures)
            await settle()
            status = scheduler.status()
            assert status.consecutive_failures == failures
            assert status.last_error == "checksum mismatch in anchors.bin"
            assert status.backoff_s == backoff
            assert status.last_success_ms == 0
            assert status.next_refresh_ms == wall_ms_at(trio.current_time() + backoff)
        await fake.done_count.wait_value(1)
        await settle()
        success_at = trio.current_time()
        status = scheduler.status()
        assert (status.consecutive_failures, status.last_error, status.backoff_s) == (0, "", 0.0)
        assert status.last_success_ms == wall_ms_at(success_at)
        assert status.next_refresh_ms == wall_ms_at(success_at + SIX_HOURS)
        await fake.call_count.wait_value(6)
        assert fake.periodic_call_times() == [
            t0 + 21600,
            t0 + 21630,
            t0 + 21690,
            t0 + 21810,
            t0 + 22050,
            t0 + 22050 + 21600,
        ]
    assert (
        messages(caplog, logging.WARNING)
        == ["Scheduled refresh failed: checksum mismatch in anchors.bin"] * 4
    )
    # An expected failure is reported in one line, without a traceback.
    assert all(r.exc_info is None for r in caplog.records if r.levelno == logging.WARNING)


async def test_backoff_is_capped_at_the_interval(autojump_clock: trio.testing.MockClock) -> None:
    scheduler, fake = make(refresh_interval=100.0)
    fake.failures = [RefreshError("warm storage unreadable") for _ in range(4)]
    backoffs = []
    async with running(scheduler):
        t0 = trio.current_time()
        for failures in range(1, 5):
            await fake.call_count.wait_value(failures)
            await settle()
            backoffs.append(scheduler.status().backoff_s)
        await fake.call_count.wait_value(6)
    assert backoffs == [30.0, 60.0, 100.0, 100.0]
    assert fake.periodic_call_times() == [
        t0 + 100,
        t0 + 130,
        t0 + 190,
        t0 + 290,
        t0 + 390,  # succeeds
        t0 + 490,
    ]


async def test_backoff_is_jittered_like_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = SchedulerConfig(refresh_interval=SIX_HOURS, jitter=0.1)
    scheduler, fake = make(config, rng=random.Random(99))
    replay = random.Random(99)
    first_wait = replay.uniform(SIX_HOURS * 0.9, SIX_HOURS * 1.1)
    retry_wait = replay.uniform(30 * 0.9, 30 * 1.1)
    fake.failures = [RefreshError("boom")]
    async with running(scheduler):
        t0 = trio.current_time()
        await fake.call_count.wait_value(2)
    times = fake.periodic_call_times()
    assert times[0] == pytest.approx(t0 + first_wait, abs=1e-9)
    assert times[1] - times[0] == pytest.approx(retry_wait, abs=1e-6)
    assert retry_wait != 30.0


async def test_unexpected_exception_is_logged_with_traceback_and_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    fake.failures = [RuntimeError("bug in loader"), ExceptionGroup("many", [KeyError("x")])]
    async with running(scheduler):
        t0 = trio.current_time()
        await fake.done_count.wait_value(1)
        assert scheduler.status().consecutive_failures == 0
    assert fake.periodic_call_times() == [t0 + 21600, t0 + 21630, t0 + 21690]
    assert messages(caplog, logging.WARNING) == [
        "Scheduled refresh failed: RuntimeError: bug in loader",
        "Scheduled refresh failed: ExceptionGroup: many (1 sub-exception)",
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert all(r.exc_info is not None for r in warnings)


async def test_slow_refreshes_stretch_the_interval_up_to_max_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS, max_interval=DAY, max_duty_cycle=0.01)
    fake.delay, fake.duration_ms = 400.0, 400_000.0
    async with running(scheduler):
        t0 = trio.current_time()
        assert scheduler.status().current_interval_s == SIX_HOURS

        await fake.done_count.wait_value(1)  # at t0 + 21600 + 400
        await settle()
        status = scheduler.status()
        assert status.current_interval_s == 40000.0
        assert status.next_refresh_ms == wall_ms_at(t0 + 22000 + 40000)

        fake.delay, fake.duration_ms = 2000.0, 2_000_000.0  # would want 200000 s
        await fake.done_count.wait_value(2)
        await settle()
        assert scheduler.status().current_interval_s == DAY

        fake.delay, fake.duration_ms = 0.0, 45.0  # fast again: back to the base interval
        await fake.done_count.wait_value(3)
        await settle()
        assert scheduler.status().current_interval_s == SIX_HOURS
        await fake.call_count.wait_value(4)
    assert fake.periodic_call_times() == [
        t0 + 21600,
        t0 + 22000 + 40000,
        t0 + 64000 + DAY,
        t0 + 64000 + DAY + SIX_HOURS,
    ]


async def test_partial_refresh_does_not_change_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    async with running(scheduler):
        fake.duration_ms = 400_000.0
        await fake.refresh(["fam-a"], trigger=RefreshTrigger.RPC)
        await settle()
        assert scheduler.status().current_interval_s == SIX_HOURS
        await fake.refresh(trigger=RefreshTrigger.RPC)
        await settle()
        assert scheduler.status().current_interval_s == 40000.0


# --- event-driven refreshes ---------------------------------------------------------------


async def test_event_driven_refresh_pushes_the_next_periodic_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    async with running(scheduler):
        t0 = trio.current_time()
        await trio.sleep(10000)
        await fake.refresh(trigger=RefreshTrigger.RPC)  # as the RefreshRules handler would
        await settle()
        assert scheduler.last_refresh() == wall_ms_at(t0 + 10000)
        assert scheduler.next_refresh_at() == wall_ms_at(t0 + 10000 + SIX_HOURS)
        await fake.call_count.wait_value(3)
    assert fake.calls == [
        (t0 + 10000, RefreshTrigger.RPC),
        (t0 + 10000 + SIX_HOURS, RefreshTrigger.PERIODIC),
        (t0 + 10000 + 2 * SIX_HOURS, RefreshTrigger.PERIODIC),
    ]


async def test_event_driven_success_resets_failure_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    fake.failures = [RefreshError("disk full"), RefreshError("disk full")]
    async with running(scheduler):
        t0 = trio.current_time()
        await fake.call_count.wait_value(2)  # failures at +21600 and +21630
        await settle()
        assert scheduler.status().backoff_s == 60.0
        await trio.sleep(20)  # the retry would come at +21690
        await fake.refresh(trigger=RefreshTrigger.MANUAL)
        await settle()
        status = scheduler.status()
        assert (status.consecutive_failures, status.last_error, status.backoff_s) == (0, "", 0.0)
        assert status.next_refresh_ms == wall_ms_at(t0 + 21650 + SIX_HOURS)
        await fake.call_count.wait_value(4)
    assert fake.calls[2:] == [
        (t0 + 21650, RefreshTrigger.MANUAL),
        (t0 + 21650 + SIX_HOURS, RefreshTrigger.PERIODIC),
    ]


async def test_event_driven_refresh_during_a_periodic_one_leaves_one_plan(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    fake.delay = 100.0
    async with running(scheduler):
        t0 = trio.current_time()
        await fake.call_count.wait_value(1)  # periodic starts at +21600, ends at +21700
        await trio.sleep(10)
        await fake.refresh(trigger=RefreshTrigger.RPC)  # +21610 .. +21710: last to finish
        await settle()
        assert scheduler.next_refresh_at() == wall_ms_at(t0 + 21710 + SIX_HOURS)
        await fake.call_count.wait_value(3)
    assert fake.periodic_call_times() == [t0 + 21600, t0 + 21710 + SIX_HOURS]


# --- disabled, stop, cancellation ---------------------------------------------------------


async def test_disabled_returns_at_once_after_started(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler, fake = make(SchedulerConfig.disabled())
    t0 = trio.current_time()
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
    assert trio.current_time() == t0  # run() had returned: the nursery closed at once
    assert messages(caplog, logging.INFO) == ["Scheduled refresh is disabled, skipping"]
    status = scheduler.status()
    assert (status.enabled, status.running, status.next_refresh_ms) == (False, False, 0)

    other, other_fake = make(SchedulerConfig.disabled())
    with trio.fail_after(1):
        await other.run()  # called directly, too
    assert trio.current_time() == t0
    await trio.sleep(DAY)
    assert fake.calls == other_fake.calls == []


async def test_stop_while_waiting_returns_promptly(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    async with running(scheduler):
        assert scheduler.status().running
        await trio.sleep(100)
        scheduler.stop()
        stopped_at = trio.current_time()
    assert trio.current_time() == stopped_at
    assert fake.calls == []
    status = scheduler.status()
    assert (status.running, status.next_refresh_ms) == (False, 0)
    assert messages(caplog, logging.INFO)[-1] == "Scheduled refresh stopped"
    scheduler.stop()  # after run(): harmless
    scheduler.stop()


async def test_stop_during_a_slow_refresh_returns_promptly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    fake.delay = 1000.0
    async with running(scheduler):
        await fake.call_count.wait_value(1)
        await trio.sleep(10)
        assert scheduler.status().running
        scheduler.stop()
        scheduler.stop()
        stopped_at = trio.current_time()
    assert trio.current_time() == stopped_at
    assert fake.done_count.value == 0  # the in-flight refresh was cancelled
    assert scheduler.status().consecutive_failures == 0  # cancellation is not a failure


async def test_stop_before_run_makes_run_return_after_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    scheduler.stop()
    t0 = trio.current_time()
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
    assert trio.current_time() == t0
    assert not scheduler.status().running
    assert fake.calls == []


async def test_outside_cancellation_propagates(autojump_clock: trio.testing.MockClock) -> None:
    scheduler, fake = make(refresh_interval=SIX_HOURS)
    t0 = trio.current_time()
    with trio.move_on_after(50) as scope:
        await scheduler.run()
    # cancelled_caught is only set if Cancelled actually left run().
    assert scope.cancelled_caught
    assert trio.current_time() == t0 + 50
    assert not scheduler.status().running
    assert fake.calls == []


async def test_outside_cancellation_during_refresh_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler, fake = make(refresh_interval=100.0)
    fake.delay = 1000.0
    t0 = trio.current_time()
    with trio.move_on_after(150) as scope:
        await scheduler.run()
    assert scope.cancelled_caught
    assert trio.current_time() == t0 + 150
    assert fake.done_count.value == 0


async def test_run_may_only_be_called_once(autojump_clock: trio.testing.MockClock) -> None:
    scheduler, _ = make(refresh_interval=SIX_HOURS)
    scheduler.stop()
    with trio.fail_after(1):
        await scheduler.run()
    with pytest.raises(RuntimeError, match="only be called once"):
        await scheduler.run()


# --- log lines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "line"),
    [
        (SchedulerConfig(), "Starting scheduled refresh with 21600 second interval"),
        (SchedulerConfig.testing(), "Starting scheduled refresh with 60 second interval"),
        (SchedulerConfig.aggressive(), "Starting scheduled refresh with 3600 second interval"),
        (
            SchedulerConfig(refresh_interval=90.5),
            "Starting scheduled refresh with 90.5 second interval",
        ),
    ],
)
async def test_start_log_line(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    config: SchedulerConfig,
    line: str,
) -> None:
    scheduler, _ = make(config)
    async with running(scheduler):
        pass
    assert messages(caplog, logging.INFO)[0] == line


@pytest.mark.parametrize(
    ("rules", "duration_ms", "line"),
    [
        (1234, 45.4, "Scheduled refresh completed: 1234 rules refreshed in 45ms"),
        (100_000, 1500.6, "Scheduled refresh completed: 100000 rules refreshed in 1501ms"),
        (0, 0.0, "Scheduled refresh completed: 0 rules refreshed in 0ms"),
    ],
)
async def test_completion_log_line(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    rules: int,
    duration_ms: float,
    line: str,
) -> None:
    scheduler, fake = make(SchedulerConfig.testing())
    fake.rules, fake.duration_ms = rules, duration_ms
    async with running(scheduler):
        await fake.done_count.wait_value(1)
        await settle()
    assert [m for m in messages(caplog, logging.INFO) if "completed" in m] == [line]


def test_status_before_run() -> None:
    scheduler, _fake = make(refresh_interval=SIX_HOURS)
    assert scheduler.status() == SchedulerStatus(
        enabled=True,
        running=False,
        last_success_ms=0,
        next_refresh_ms=0,
        consecutive_failures=0,
        last_error="",
        current_interval_s=SIX_HOURS,
        backoff_s=0.0,
        last_stats=None,
    )
    assert scheduler.config == SchedulerConfig(jitter=0.0)
    scheduler.stop()  # before Trio even runs: harmless
