"""Storage benchmarks (issue 2): warm write, load + verify, durable installs, hot-cache heap.

- ``write_<n>``: :meth:`WarmStore.write_snapshot_from` of ``n`` generated rules
  into an empty directory. The call encodes, writes, fsyncs, renames and then
  reloads (verifies) the store it wrote: what ``warm import`` costs. Rule
  generation is not measured.
- ``load_verify_<n>``: :meth:`WarmStore.load` of that store with a fresh
  ``WarmStore``: manifest, mmap, every checksum (xxh3 over all sections,
  anchors included), ids index. Page cache warm (the store was just written).
- ``install_<batch>_into_<n>``: :meth:`Bridge.install_rules` of a batch of new
  rules into a store of ``n`` (journal append + fdatasync + manifest swap with
  fsyncs), durable on return; ``store_append_...`` is the same through
  :meth:`WarmStore.append` alone (no validation, no Trio thread hop).
- ``hot_cache_heap_bytes_per_rule``: :mod:`tracemalloc` around filling a
  :class:`HotCache` with :class:`RuleRef` values the way a refresh does, then
  again after every cached rule has been materialised (``ref.rule``).
"""

from __future__ import annotations

import gc
import logging
import time
import tracemalloc
from itertools import islice
from pathlib import Path
from typing import Any

import attrs
import trio

from guardrefresh.bridge import Bridge
from guardrefresh.cache import HotCache
from guardrefresh.model import BLOCK_BYTES, Rule
from guardrefresh.storage import RuleRef, WarmStore, family_of

from ._data import STORE_NAME, Plan, Target, Workspace, entry, make_batch

__all__ = ["run_storage"]

logger = logging.getLogger(__name__)

LOAD_TARGETS_MS = {10_000: 50.0, 100_000: 500.0}
INSTALL_TARGET_MS = 50.0
INSTALL_STORE_SIZE = 100_000
HOT_BYTES_TARGET = 1024.0
AGENT = "agent-bench"


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def bench_write(ws: Workspace, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in plan.sizes:
        rules = ws.ruleset.rules(n)
        samples: list[float] = []
        path: Path | None = None
        size_bytes = 0
        for r in range(plan.write_repeats):
            path = ws.fresh_dir(f"write-{n}-{r}") / STORE_NAME
            store = WarmStore(path)
            gc.collect()
            started = time.perf_counter()
            store.write_snapshot_from(rules)
            samples.append(_ms(time.perf_counter() - started))
            store.close()
            size_bytes = sum(p.stat().st_size for p in path.parent.iterdir())
            # Keep only the last store written (100k rules take 820 MB each).
            ws.adopt(n, path)
        logger.info("write %d rules: median %.1f ms", n, sorted(samples)[len(samples) // 2])
        out[f"write_{n}"] = entry(
            parameters={
                "rules": n,
                "anchors_per_slot": 16,
                "repeats": plan.write_repeats,
                "store_bytes": size_bytes,
                "measures": "write_snapshot_from: encode + write + fsync + rename + verifying reload",
            },
            unit="ms",
            samples=samples,
            extra={"mb_per_s": size_bytes / 1e6 / (min(samples) / 1000.0)},
        )
    return out


def bench_load(ws: Workspace, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in plan.sizes:
        path = ws.store(n)
        samples: list[float] = []
        for _ in range(plan.load_repeats):
            store = WarmStore(path)
            gc.collect()
            started = time.perf_counter()
            table = store.load()
            samples.append(_ms(time.perf_counter() - started))
            if len(table) != n:
                raise AssertionError(f"loaded {len(table)} rules, expected {n}")
            del table
            store.close()
        target = LOAD_TARGETS_MS.get(n)
        out[f"load_verify_{n}"] = entry(
            parameters={
                "rules": n,
                "repeats": plan.load_repeats,
                "page_cache": "warm",
                "measures": "WarmStore.load: manifest, mmap, all checksums, ids index",
            },
            unit="ms",
            samples=samples,
            targets=[Target("median", "<=", target, "ms")] if target else [],
        )
    return out


async def _install_via_bridge(path: Path, batches: list[list[Rule]]) -> list[float]:
    bridge = await Bridge.open(path)
    try:
        samples: list[float] = []
        for batch in batches:
            started = time.perf_counter()
            result = await bridge.install_rules(AGENT, batch)
            samples.append(_ms(time.perf_counter() - started))
            if result.rules_installed != len(batch):
                raise AssertionError(f"installed {result.rules_installed} of {len(batch)}")
        return samples
    finally:
        bridge.close()


def _install_via_store(path: Path, batches: list[list[Rule]]) -> list[float]:
    store = WarmStore(path)
    try:
        table = store.load()
        samples: list[float] = []
        for batch in batches:
            stamped = [attrs.evolve(rule, installed_by=AGENT) for rule in batch]
            started = time.perf_counter()
            table = store.append(table, stamped, ())
            samples.append(_ms(time.perf_counter() - started))
        return samples
    finally:
        store.close()


def bench_install(ws: Workspace, plan: Plan) -> dict[str, Any]:
    n = max(plan.sizes)
    path = ws.clone(n)
    count = plan.install_batches
    batches = [make_batch(plan.install_batch_size, k, agent=AGENT) for k in range(2 * count)]
    via_bridge = trio.run(_install_via_bridge, path, batches[:count])
    via_store = _install_via_store(path, batches[count:])
    applies = n == INSTALL_STORE_SIZE
    batch = plan.install_batch_size
    params = {
        "store_rules": n,
        "batch": batch,
        "batches": plan.install_batches,
        "durable_on_return": "journal fdatasync + manifest temp/fsync/rename/dir fsync",
    }
    return {
        f"install_{batch}_into_{n}": entry(
            parameters={
                **params,
                "measures": "await Bridge.install_rules (validate, lock, "
                "thread hop, WarmStore.append, hot-cache insert)",
            },
            unit="ms",
            samples=via_bridge,
            targets=[Target("median", "<=", INSTALL_TARGET_MS, "ms")],
            applies=applies,
        ),
        f"store_append_{batch}_into_{n}": entry(
            parameters={**params, "measures": "WarmStore.append alone"},
            unit="ms",
            samples=via_store,
        ),
    }


def bench_hot_cache_bytes(ws: Workspace, plan: Plan) -> dict[str, Any]:
    n = max(plan.sizes)
    store = WarmStore(ws.store(n))
    table = store.load()
    try:
        capacity = plan.hot_capacity
        gc.collect()
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            cache: HotCache[RuleRef] = HotCache(capacity, family_of=family_of)
            # As RefreshService._prepare does: refs in storage order up to capacity.
            cache.replace((ref.rule_id, ref) for ref in islice(table.iter_refs(), capacity))
            gc.collect()
            refs_only, _ = tracemalloc.get_traced_memory()
            cached = len(cache)
            for _key, ref in cache.snapshot():
                ref.rule  # noqa: B018  # materialise, as a GetRule does on first access
            gc.collect()
            materialised, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        per_ref = (refs_only - base) / cached
        per_rule = (materialised - base) / cached
        params = {
            "store_rules": n,
            "cached_rules": cached,
            "hot_capacity": capacity,
            "anchor_block_bytes": BLOCK_BYTES,
            "anchors_on_heap": False,
            "note": "anchor blocks stay in the mmap'd segment; heap bytes exclude them",
        }
        return {
            "hot_cache_heap_bytes_per_rule": entry(
                parameters={**params, "measures": "HotCache of RuleRef values (refresh fill)"},
                unit="bytes",
                samples=[per_ref],
                targets=[Target("median", "<=", HOT_BYTES_TARGET, "bytes")],
                applies=not plan.tiny,
            ),
            "hot_cache_heap_bytes_per_materialised_rule": entry(
                parameters={**params, "measures": "same cache after ref.rule on every entry"},
                unit="bytes",
                samples=[per_rule],
            ),
        }
    finally:
        del table
        store.close()


def run_storage(ws: Workspace, plan: Plan) -> dict[str, Any]:
    """Every storage benchmark; the section of the results document."""
    results: dict[str, Any] = {}
    results.update(bench_write(ws, plan))
    results.update(bench_load(ws, plan))
    results.update(bench_hot_cache_bytes(ws, plan))
    results.update(bench_install(ws, plan))
    return results
