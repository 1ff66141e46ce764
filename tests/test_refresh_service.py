"""The event-driven RefreshService: single flight, partial refresh, working set, failures.

Real warm-storage files in tmp_path. A worker-thread hook (``before_load``)
holds a load open where a test needs one in flight; the autojump clock drives
the scheduler test; the canary test uses the real clock on purpose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from factories import make_rule

from guardrefresh.bridge import Bridge
from guardrefresh.model import Rule
from guardrefresh.refresh import RefreshError, RefreshScheduler, RefreshTrigger, SchedulerConfig
from guardrefresh.refresh._service import RefreshService, open_refresh_service
from guardrefresh.storage import WarmStore


def rules(n: int, *, families: int = 3, prefix: str = "r") -> list[Rule]:
    return [make_rule(f"{prefix}{i}", seed=i, family_id=f"f{i % families}") for i in range(n)]


def write_store(path: Path, items: list[Rule]) -> None:
    store = WarmStore(path)
    store.open(make_dirs=True)
    store.write_snapshot_from(items)
    store.close()


@pytest.fixture
async def bridge(store_path: Path) -> AsyncIterator[Bridge]:
    write_store(store_path, rules(30))
    b = await Bridge.open(store_path, hot_capacity=10)
    yield b
    b.close()


@pytest.fixture
async def service(bridge: Bridge) -> AsyncIterator[RefreshService]:
    async with open_refresh_service(bridge) as svc:
        yield svc


def hold_loads(service: RefreshService) -> threading.Event:
    """Make every load wait in its worker thread until the returned event is set."""
    release = threading.Event()
    service.before_load = lambda: release.wait(10)
    return release


async def test_full_refresh_fills_the_hot_cache(service: RefreshService, bridge: Bridge) -> None:
    stats = await service.refresh(trigger=RefreshTrigger.RPC)
    assert stats.rules_refreshed == 10 == len(bridge.cache)
    assert (stats.added, stats.removed, stats.changed, stats.unchanged) == (10, 0, 0, False)
    assert stats.trigger is RefreshTrigger.RPC and stats.families == ()
    assert service.last_stats.value == stats
    again = await service.refresh()
    assert again.unchanged and (again.added, again.removed, again.changed) == (0, 0, 0)


async def test_thousand_concurrent_calls_cost_at_most_two_loads(service: RefreshService) -> None:
    release = hold_loads(service)
    results: list[object] = []

    async def call(i: int) -> None:
        families = () if i % 3 else (f"f{i % 3}",)
        results.append(await service.refresh(families, trigger=RefreshTrigger.RPC))

    async with trio.open_nursery() as nursery:
        for i in range(1000):
            nursery.start_soon(call, i)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert len(results) == 1000
    assert service.loads <= 2


async def test_callers_arriving_during_a_full_refresh_join_it(service: RefreshService) -> None:
    release = hold_loads(service)
    got: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(got, service.refresh()))
        await trio.testing.wait_all_tasks_blocked(0.05)  # the load is now in its thread
        for families in [(), ("f1",), ("f0", "f2")]:
            nursery.start_soon(lambda f=families: _append(got, service.refresh(f)))
        await trio.testing.wait_all_tasks_blocked(0.05)
        release.set()
    assert service.loads == 1
    assert len({id(s) for s in got}) == 1  # everyone got the same stats object


async def _append(into: list[object], awaitable: object) -> None:
    into.append(await awaitable)  # type: ignore[misc]


async def test_partial_refresh_touches_only_named_families(
    service: RefreshService, bridge: Bridge, store_path: Path
) -> None:
    await service.refresh()
    untouched = {k: v for k, v in bridge.cache.snapshot() if v.family_id != "f1"}
    # Another writer changes rules of f1 and f2 behind the service's back.
    other = WarmStore(store_path)
    base = other.load()
    hot_f1 = [k for k, v in bridge.cache.snapshot() if v.family_id == "f1"]
    changed = [make_rule(k, seed=999, family_id="f1") for k in hot_f1]
    other.append(base, [*changed, make_rule("r2", seed=5, family_id="f2")])
    other.close()
    stats = await service.refresh(["f1"])
    assert stats.families == ("f1",)
    assert stats.changed == len(hot_f1) > 0
    after = dict(bridge.cache.snapshot())
    for key, ref in untouched.items():
        assert after[key] is ref  # same object: not even re-read
    for key in hot_f1:
        assert after[key].rule.anchors == changed[0].anchors


async def test_working_set_survives_a_refresh(service: RefreshService, bridge: Bridge) -> None:
    await service.refresh()
    # Use rules that are not hot yet: they are promoted from warm and become most recent.
    cold = [i for i in bridge.table.ids() if i not in bridge.cache][:4]
    for rule_id in cold:
        assert bridge.get_rule(rule_id) is not None
    mru = bridge.cache.keys_mru(4)
    assert sorted(mru) == sorted(cold)
    await service.refresh()
    assert bridge.cache.keys_mru(4) == mru
    assert len(bridge.cache) == 10


async def test_failed_refresh_keeps_serving_the_last_good_rules(
    service: RefreshService, bridge: Bridge, store_path: Path
) -> None:
    await service.refresh()
    before = bridge.cache.snapshot()
    table = bridge.table
    snap = next(store_path.parent.glob("*.snap"))
    good = snap.read_bytes()
    broken = bytearray(good)
    broken[len(broken) // 2] ^= 0x10
    snap.write_bytes(bytes(broken))
    with pytest.raises(RefreshError, match=r"corrupt warm storage .*checksum mismatch"):
        await service.refresh()
    assert bridge.cache.snapshot() == before
    assert bridge.table is table
    assert bridge.get_rule("r3") is not None
    snap.write_bytes(good)
    recovered = await service.refresh()
    assert recovered.unchanged


async def test_a_caller_giving_up_does_not_cancel_the_shared_load(
    service: RefreshService, bridge: Bridge
) -> None:
    release = hold_loads(service)
    joined: list[object] = []
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as impatient:
            nursery.start_soon(lambda: _append(joined, service.refresh()))
            await trio.testing.wait_all_tasks_blocked(0.05)
            impatient.cancel()
        with trio.move_on_after(0):  # this caller gives up at once
            await service.refresh()
        release.set()
    assert len(joined) == 1 and service.loads == 1
    assert len(bridge.cache) == 10


async def test_closing_the_service_mid_load_never_swaps(bridge: Bridge, store_path: Path) -> None:
    async with open_refresh_service(bridge) as svc:
        await svc.refresh()
    before = bridge.cache.snapshot()
    table = bridge.table
    WarmStore(store_path).write_snapshot_from(rules(30, prefix="new"))
    got: list[BaseException] = []

    async def call(svc: RefreshService) -> None:
        try:
            await svc.refresh()
        except RefreshError as exc:
            got.append(exc)

    async with trio.open_nursery() as outer, open_refresh_service(bridge) as svc:
        release = hold_loads(svc)
        outer.start_soon(call, svc)
        await trio.testing.wait_all_tasks_blocked(0.05)
        threading.Timer(0.05, release.set).start()
        # Leave the block while the load is in its thread: the service is cancelled.
    assert got and "shutting down" in str(got[0])
    assert bridge.cache.snapshot() == before
    assert bridge.table is table


async def test_working_set_is_preloaded_after_restart(store_path: Path) -> None:
    write_store(store_path, rules(50))
    side = store_path.with_name("ws.json")
    first = await Bridge.open(store_path, hot_capacity=5)
    async with open_refresh_service(first, working_set_path=side) as svc:
        await svc.refresh(trigger=RefreshTrigger.STARTUP)
        for rule_id in ["r40", "r41", "r42"]:
            first.get_rule(rule_id)
        await svc.save_working_set()
    first.close()
    second = await Bridge.open(store_path, hot_capacity=5)
    async with open_refresh_service(second, working_set_path=side) as svc:
        await svc.refresh(trigger=RefreshTrigger.STARTUP)
    assert second.cache.keys_mru(3) == ["r42", "r41", "r40"]
    second.close()


async def test_scheduler_stop_mid_load_returns_within_a_virtual_second(
    bridge: Bridge, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_refresh_service(bridge) as svc:
        await svc.refresh(trigger=RefreshTrigger.STARTUP)
        before = bridge.cache.snapshot()
        config = SchedulerConfig(refresh_interval=60, jitter=0)
        scheduler = RefreshScheduler(svc, config)
        release = threading.Event()
        svc.before_load = lambda: release.wait(10)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await trio.sleep(60.5)  # the periodic refresh is now waiting on its load
            assert svc.loads == 2
            stopped_at = trio.current_time()
            scheduler.stop()
        assert trio.current_time() - stopped_at < 1
        assert bridge.cache.snapshot() == before
        release.set()


async def test_event_loop_stays_responsive_during_a_large_refresh(store_path: Path) -> None:
    """Real clock: a 1 ms ticker must never be late by more than 250 ms (gross check)."""
    write_store(store_path, rules(20_000, families=20))
    b = await Bridge.open(store_path, hot_capacity=10_000)
    worst = 0.0
    async with open_refresh_service(b) as svc:
        done = trio.Event()

        async def canary() -> None:
            nonlocal worst
            while not done.is_set():
                start = time.perf_counter()
                await trio.sleep(0.001)
                worst = max(worst, time.perf_counter() - start - 0.001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(canary)
            stats = await svc.refresh()
            done.set()
    assert stats.rules_refreshed == 10_000
    assert worst < 0.25, f"event loop blocked for {worst * 1000:.0f} ms"
    b.close()
