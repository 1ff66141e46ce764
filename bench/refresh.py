"""Refresh benchmarks (issue 3): full and unchanged refreshes, and event-loop lag during one.

- ``full_refresh_<n>``: ``await service.refresh()`` (load + verify + pick the hot
  set + swap) with the hot cache emptied first, so every hot rule is new and the
  swap happens: what the warm-up refresh and a refresh after a big change cost.
  Hot capacity 10,000 (the default).
- ``unchanged_refresh_<n>``: the same call right after a refresh, on an
  unchanged store (load + verify + diff, no swap): what an RPC-triggered or
  periodic refresh usually costs.
- ``canary_lag_during_full_refresh_<n>``: a Trio task sleeps 1 ms in a loop
  during the full refreshes of the largest size and records how late each
  wake-up is (how long any other task, e.g. a gRPC read, would have waited).
  ``canary_lag_idle`` is the same with no refresh running: the floor.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from pathlib import Path
from typing import Any

import trio

from guardrefresh.bridge import Bridge
from guardrefresh.refresh import RefreshTrigger, open_refresh_service

from ._data import Plan, Target, Workspace, entry

__all__ = ["run_refresh"]

logger = logging.getLogger(__name__)

FULL_TARGETS_MS = {10_000: 50.0, 100_000: 500.0}
CANARY_SIZE = 100_000
CANARY_P99_MS = 10.0
CANARY_MAX_MS = 25.0
CANARY_PERIOD_S = 0.001


class _Canary:
    """Sleeps 1 ms in a loop; records the lateness of each wake-up inside a window.

    Only sleeps that start after :meth:`open` and wake before :meth:`close`
    count: a sleep overlapping the benchmark's own set-up (``gc.collect()``,
    emptying the cache) would blame the refresh for it.
    """

    def __init__(self) -> None:
        self._since: float | None = None
        self.samples_ms: list[float] = []

    def open(self) -> None:
        self._since = time.perf_counter()

    def close(self) -> None:
        self._since = None

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await trio.sleep(CANARY_PERIOD_S)
            after = time.perf_counter()
            since = self._since
            if since is not None and before >= since:
                self.samples_ms.append((after - before - CANARY_PERIOD_S) * 1000.0)


async def _refresh_size(path: Path, n: int, plan: Plan, *, canary: bool) -> dict[str, list[float]]:
    bridge = await Bridge.open(path, hot_capacity=plan.hot_capacity)
    out: dict[str, list[float]] = {"full": [], "unchanged": [], "canary": [], "idle": []}
    try:
        async with open_refresh_service(bridge) as service, trio.open_nursery() as nursery:
            probe = _Canary()
            if canary:
                nursery.start_soon(probe.run)
                # The floor: lag with nothing else running.
                probe.open()
                await trio.sleep(0.5 if plan.tiny else 2.0)
                probe.close()
                out["idle"] = probe.samples_ms
                probe.samples_ms = []
            expected_hot = min(n, plan.hot_capacity)
            for _ in range(plan.refresh_repeats):
                bridge.cache.replace([])  # empty: every hot rule is new, the swap happens
                gc.collect()
                probe.open()
                started = time.perf_counter()
                stats = await service.refresh(trigger=RefreshTrigger.MANUAL)
                out["full"].append((time.perf_counter() - started) * 1000.0)
                probe.close()
                if stats.added != expected_hot or len(bridge.cache) != expected_hot:
                    raise AssertionError(
                        f"full refresh made {stats.added} rules hot, not {expected_hot}"
                    )
            out["canary"] = probe.samples_ms
            for _ in range(plan.refresh_repeats):
                gc.collect()
                started = time.perf_counter()
                stats = await service.refresh(trigger=RefreshTrigger.MANUAL)
                out["unchanged"].append((time.perf_counter() - started) * 1000.0)
                if not stats.unchanged:
                    raise AssertionError(f"expected an unchanged refresh, got {stats}")
            nursery.cancel_scope.cancel()
    finally:
        bridge.close()
    return out


def run_refresh(ws: Workspace, plan: Plan) -> dict[str, Any]:
    """Every refresh benchmark; the section of the results document."""
    results: dict[str, Any] = {}
    largest = max(plan.sizes)
    for n in plan.sizes:
        path = ws.store(n)
        measured = trio.run(functools.partial(_refresh_size, path, n, plan, canary=n == largest))
        target = FULL_TARGETS_MS.get(n)
        params = {
            "rules": n,
            "hot_capacity": plan.hot_capacity,
            "repeats": plan.refresh_repeats,
            "page_cache": "warm",
        }
        results[f"full_refresh_{n}"] = entry(
            parameters={
                **params,
                "measures": "service.refresh() with an empty hot cache: "
                "load + verify + hot set + swap",
            },
            unit="ms",
            samples=measured["full"],
            targets=[Target("median", "<=", target, "ms")] if target else [],
        )
        results[f"unchanged_refresh_{n}"] = entry(
            parameters={**params, "measures": "service.refresh() right after one, store unchanged"},
            unit="ms",
            samples=measured["unchanged"],
        )
        if n == largest:
            canary_params = {
                "rules": n,
                "period_ms": CANARY_PERIOD_S * 1000.0,
                "refreshes": plan.refresh_repeats,
                "measures": "lateness of 1 ms trio.sleep wake-ups during full refreshes",
            }
            results[f"canary_lag_during_full_refresh_{n}"] = entry(
                parameters=canary_params,
                unit="ms",
                samples=measured["canary"],
                targets=[
                    Target("p99", "<=", CANARY_P99_MS, "ms"),
                    Target("max", "<=", CANARY_MAX_MS, "ms"),
                ],
                applies=n == CANARY_SIZE,
            )
            results["canary_lag_idle"] = entry(
                parameters={**canary_params, "measures": "same canary, nothing else running"},
                unit="ms",
                samples=measured["idle"],
            )
    return results
