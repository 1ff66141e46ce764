"""Enforce benchmarks (issue 15): in-process decisions of the vectorised engine.

- ``decide_nothing_matching_<n>``: ``EnforcementEngine.evaluate`` with ``n`` rules in scope
  of the tenant and layer, none matching, so every rule is evaluated and every evidence
  record built (wire encoding not included). Evaluation set already built (the first
  call is measured separately). Rules have FULL anchors (16 per slot, 8 KiB each), half
  ``min`` and half ``weighted-avg``, all four policy types; the store also holds other
  tenants' rules (out of scope). Targets: p50 <= 2 ms at 1,000, <= 15 ms at 10,000.
- ``reference_nothing_matching_<n>`` and ``speedup_vs_reference_<n>``: the scalar
  reference (``guardrefresh.enforce.reference_evaluate``) on the same rules and intents,
  measured round by round next to the engine; one speedup sample per round
  (reference time / engine median of that round). Target: median >= 50x at 1,000.
- ``build_evaluation_set_<n>``: the first decision of a (tenant, layer), which builds
  its groups from warm storage (anchors copied and normalised). No target.
- ``decide_after_install_10_<n>``: the first decision after a 10-rule install for the
  tenant (the groups are patched, not rebuilt). No target.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import time
from typing import Any

import attrs
import numpy as np
import trio

from guardrefresh.bridge import Bridge
from guardrefresh.enforce import Decision, EnforcementEngine, reference_evaluate
from guardrefresh.model import Rule
from guardrefresh.storage import WarmStore

from ._data import STORE_NAME, Plan, Target, Workspace, entry, make_rules

__all__ = ["run_enforce"]

logger = logging.getLogger(__name__)

TENANT = "tenant-bench"
LAYER = "L1"
DECIDE_TARGETS_MS = {1_000: 2.0, 10_000: 15.0}
SPEEDUP_SIZE = 1_000
SPEEDUP_TARGET = 50.0
#: Share of out-of-scope rules (other tenants) stored next to the tenant's.
OTHER_SHARE = 0.25


@attrs.frozen
class _Sizes:
    sizes: tuple[int, ...]
    repeats: int
    reference_rounds: int
    reference_size: int

    @classmethod
    def of(cls, plan: Plan) -> _Sizes:
        if plan.tiny:
            return cls((50, 200), 5, 1, 50)
        return cls((1_000, 10_000), 200, 3, SPEEDUP_SIZE)


def _scored(rules: list[Rule]) -> list[Rule]:
    """Give rules the params the management plane sets, in scope of LAYER."""
    thresholds = json.dumps(
        {"action": 0.9, "data": 0.9, "resource": 0.9, "risk": 0.9}, separators=(",", ":")
    )
    out = []
    for i, rule in enumerate(rules):
        params = dict(rule.params)
        params.update(
            rule_type="design_boundary",
            rule_decision="min" if i % 2 else "weighted-avg",
            thresholds=thresholds,
            notes=f"bench rule {i}",
        )
        out.append(attrs.evolve(rule, params=params, layer=("", LAYER)[i % 2], enabled=True))
    return out


def _rules_for(n: int) -> list[Rule]:
    mine = _scored(make_rules(n, seed=15, prefix=f"enf-{n}-", agent=TENANT))
    others = _scored(
        make_rules(
            max(1, int(n * OTHER_SHARE)), seed=16, prefix=f"other-{n}-", agent="someone-else"
        )
    )
    return mine + others


def _check(result: Any, n: int) -> None:
    if result.decision is not Decision.DENY or result.deciding_rule or result.rules_evaluated != n:
        raise AssertionError(
            f"expected nothing to match among {n} rules, got {result.decision_name} by "
            f"{result.deciding_rule!r} after {result.rules_evaluated} rules {result.error}"
        )


async def _measure(ws: Workspace, n: int, sizes: _Sizes) -> dict[str, Any]:
    rules = _rules_for(n)
    path = ws.fresh_dir(f"enforce-{n}") / STORE_NAME
    store = WarmStore(path)
    try:
        store.write_snapshot_from(rules)
    finally:
        store.close()
    bridge = await Bridge.open(path)
    out: dict[str, Any] = {"decide": [], "reference": [], "speedup": [], "engine_rounds": []}
    try:
        engine = EnforcementEngine(bridge)
        rng = np.random.default_rng(n)
        vectors = [rng.standard_normal(128).astype(np.float32) for _ in range(sizes.repeats)]

        def decide(vector: np.ndarray) -> float:
            started = time.perf_counter()
            result = engine.evaluate(vector, tenant_id=TENANT, layer=LAYER, drift_score=0.3)
            elapsed = (time.perf_counter() - started) * 1000.0
            _check(result, n)
            return elapsed

        gc.collect()
        out["build"] = [decide(vectors[0])]
        out["decide"] = [decide(v) for v in vectors]

        if n == sizes.reference_size:
            # Side by side, round by round: the reference on the same rules (materialised
            # outside the timing), then the engine on the same intents.
            stored = [bridge.table.rule(rule.rule_id) for rule in rules]
            table_rules = [rule for rule in stored if rule is not None]
            for round_ in range(sizes.reference_rounds):
                vector = vectors[round_ % len(vectors)]
                started = time.perf_counter()
                want = reference_evaluate(
                    table_rules, vector.tolist(), tenant_id=TENANT, layer=LAYER, drift_score=0.3
                )
                reference_ms = (time.perf_counter() - started) * 1000.0
                _check(want, n)
                engine_ms = float(np.median([decide(vector) for _ in range(20)]))
                out["reference"].append(reference_ms)
                out["engine_rounds"].append(engine_ms)
                out["speedup"].append(reference_ms / engine_ms)

        batch = _scored(make_rules(10, seed=17, prefix=f"new-{n}-", agent=TENANT))
        for i in range(min(5, sizes.repeats)):
            batch = [attrs.evolve(rule, rule_id=f"{rule.rule_id}-{i}") for rule in batch]
            await bridge.install_rules(TENANT, batch)
            n += len(batch)
            gc.collect()
            out.setdefault("after_install", []).append(decide(vectors[i]))
    finally:
        bridge.close()
    return out


def run_enforce(ws: Workspace, plan: Plan) -> dict[str, Any]:
    """Every Enforce benchmark; the section of the results document."""
    sizes = _Sizes.of(plan)
    results: dict[str, Any] = {}
    for n in sizes.sizes:
        measured = trio.run(functools.partial(_measure, ws, n, sizes))
        params = {
            "rules_in_scope": n,
            "rules_stored": n + max(1, int(n * OTHER_SHARE)),
            "anchors_per_slot": 16,
            "hot_capacity": 10_000,
        }
        target = DECIDE_TARGETS_MS.get(n)
        results[f"decide_nothing_matching_{n}"] = entry(
            parameters={
                **params,
                "repeats": sizes.repeats,
                "measures": "engine.evaluate(), every rule evaluated, evidence built, no wire encoding",
            },
            unit="ms",
            samples=measured["decide"],
            targets=[Target("median", "<=", target, "ms")] if target else [],
            applies=target is not None and not plan.tiny,
        )
        results[f"build_evaluation_set_{n}"] = entry(
            parameters={
                **params,
                "measures": "first decision of the (tenant, layer): groups built",
            },
            unit="ms",
            samples=measured["build"],
        )
        results[f"decide_after_install_10_{n}"] = entry(
            parameters={**params, "measures": "first decision after a 10-rule install (patched)"},
            unit="ms",
            samples=measured["after_install"],
        )
        if measured["reference"]:
            results[f"reference_nothing_matching_{n}"] = entry(
                parameters={
                    **params,
                    "rounds": sizes.reference_rounds,
                    "measures": "reference_evaluate() on the same rules and intents",
                },
                unit="ms",
                samples=measured["reference"],
            )
            results[f"speedup_vs_reference_{n}"] = entry(
                parameters={
                    **params,
                    "rounds": sizes.reference_rounds,
                    "measures": "reference ms / engine median ms (20 calls), same round",
                },
                unit="x",
                samples=measured["speedup"],
                targets=[Target("median", ">=", SPEEDUP_TARGET, "x")],
                applies=n == SPEEDUP_SIZE and not plan.tiny,
                extra={"engine_round_medians_ms": measured["engine_rounds"]},
            )
    return results
