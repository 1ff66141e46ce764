"""Enforce through the tiers: rules come from warm storage whatever the hot cache holds,
the hot cache learns what decisions read, and installs, removals, upserts, compactions and
reloads show in the very next decision.

Real warm stores in tmp_path, written through the Bridge.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import trio
from enforce_support import assert_same_result, scored_rule, table_rules

from guardrefresh.bridge import Bridge
from guardrefresh.enforce import Decision, EnforcementEngine, EnforcementResult, reference_evaluate
from guardrefresh.model import PolicyType, Rule
from guardrefresh.storage import WarmStore

RNG_SEED = 7


def tenant_rules(count: int, *, agent: str = "t1", seed: int = RNG_SEED) -> list[Rule]:
    """``count`` rules of every policy type, one to three anchors per slot, none matching
    the random intents below except by chance."""
    rng = np.random.default_rng(seed)
    policies = list(PolicyType)
    rules = []
    for i in range(count):
        slots = [rng.standard_normal((int(rng.integers(1, 4)), 32)).tolist() for _ in range(4)]
        rules.append(
            scored_rule(
                f"{agent}-{i:03d}",
                slots=slots,
                padding=0.5,
                agent_id=agent if i % 4 else "",
                policy_type=policies[i % 4],
                priority=int(rng.integers(0, 5)),
                thresholds=(0.3, 0.3, 0.3, 0.3),
                mode="min" if i % 3 else "weighted-avg",
            )
        )
    return rules


def intents(count: int, rules: list[Rule], seed: int = 1) -> list[list[float]]:
    """Intents near some rule's anchors (so decisions vary), and random ones."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        if i % 2:
            out.append(rng.standard_normal(128).tolist())
            continue
        rule = rules[int(rng.integers(len(rules)))]
        vector = np.concatenate([rule.anchors.vectors[s, 0] for s in range(4)])
        out.append((vector + 0.3 * rng.standard_normal(128)).tolist())
    return out


def check(
    engine: EnforcementEngine, bridge: Bridge, vector: list[float], **request: object
) -> EnforcementResult:
    params = {"tenant_id": "t1", "layer": None, "drift_score": 0.0}
    params.update(request)
    got = engine.evaluate(vector, **params)  # type: ignore[arg-type]
    rules = table_rules(bridge.table)
    want = reference_evaluate(rules, vector, **params)  # type: ignore[arg-type]
    assert_same_result(got, want, rules, vector)
    return got


async def test_small_hot_cache_changes_no_answer(tmp_path: Path) -> None:
    rules = tenant_rules(48)
    big = await Bridge.open(tmp_path / "a" / "warm_storage.bin", make_dirs=True)
    small = await Bridge.open(tmp_path / "b" / "warm_storage.bin", make_dirs=True, hot_capacity=8)
    for bridge in (big, small):
        await bridge.install_rules("t1", rules)
    in_scope = len(rules)
    assert small.cache.capacity < in_scope
    engines = EnforcementEngine(big), EnforcementEngine(small)
    decisions = set()
    for vector in intents(30, rules):
        got = [e.evaluate(vector, tenant_id="t1", layer=None, drift_score=0.1) for e in engines]
        assert got[0] == got[1]
        check(engines[1], small, vector, drift_score=0.1)
        decisions.add(got[0].decision)
        assert len(small.cache) <= 8
    assert len(decisions) >= 3  # the intents exercise more than the fail-closed path
    # Everything evaluated went through the small cache: many misses, each promoted.
    stats = small.cache.stats()
    assert stats.misses > in_scope and stats.total_evicted > 0
    big.close()
    small.close()


async def test_decisions_mark_rules_used_and_promote_the_rest(tmp_path: Path) -> None:
    rules = tenant_rules(12)
    bridge = await Bridge.open(tmp_path / "warm_storage.bin", make_dirs=True)
    await bridge.install_rules("t1", rules)
    engine = EnforcementEngine(bridge)
    vector = np.random.default_rng(3).standard_normal(128).tolist()
    result = check(engine, bridge, vector)
    evaluated = [e.rule_id for e in result.evidence]
    assert len(evaluated) == len(rules)  # nothing matched: every rule read
    # Hot hits move to the top, in evaluation order (the last evaluated is the newest).
    assert bridge.cache.keys_mru(len(evaluated)) == evaluated[::-1]
    # Emptied hot cache (as after eviction): the decision reads warm storage and promotes.
    bridge.cache.replace([])
    before = bridge.cache.stats()
    again = engine.evaluate(vector, tenant_id="t1", layer=None, drift_score=0.0)
    assert again == result
    assert sorted(bridge.cache.keys_mru()) == sorted(evaluated)
    assert bridge.cache.stats().misses - before.misses == len(evaluated)
    hot = bridge.get_rule(evaluated[0])
    assert hot is not None and hot[0] == bridge.table.rule(evaluated[0])
    bridge.close()


def allow_all(rule_id: str, **fields: object) -> Rule:
    """A context_allow rule that matches anything (threshold 0 in every slot)."""
    return scored_rule(rule_id, slots=[[[1.0] * 32]] * 4, thresholds=(0.0,) * 4, **fields)  # type: ignore[arg-type]


async def test_writes_show_in_the_next_decision(tmp_path: Path) -> None:
    path = tmp_path / "warm_storage.bin"
    bridge = await Bridge.open(path, make_dirs=True)
    base = tenant_rules(20)
    await bridge.install_rules("t1", base)
    engine = EnforcementEngine(bridge)
    vector = np.random.default_rng(5).standard_normal(128).tolist()
    assert check(engine, bridge, vector).decision is Decision.DENY
    groups_before = set(map(id, engine.evaluation_set("t1", None).groups))

    await bridge.install_rules("t1", [allow_all("open", agent_id="t1")])
    opened = check(engine, bridge, vector)
    assert (opened.decision, opened.deciding_rule) == (Decision.ALLOW, "open")
    # Patched in place, not rebuilt: the same group objects carry the new rule.
    assert set(map(id, engine.evaluation_set("t1", None).groups)) == groups_before

    # Another tenant's install changes nothing for t1, a global one does.
    await bridge.install_rules(
        "t2", [allow_all("theirs", agent_id="t2", priority=99, modification_spec='{"a": 1}')]
    )
    assert check(engine, bridge, vector).deciding_rule == "open"
    await bridge.install_rules(
        "t2", [allow_all("global-modify", priority=98, modification_spec='{"a": 1}')]
    )
    modified = check(engine, bridge, vector)
    assert (modified.decision, modified.modified_params) == (Decision.MODIFY, '{"a": 1}')

    # Upsert: the global rule becomes a forbidden one.
    await bridge.install_rules("t2", [allow_all("global-modify", policy_type=PolicyType.FORBIDDEN)])
    assert check(engine, bridge, vector).decision is Decision.DENY
    # Disabled by an upsert: gone from scope.
    await bridge.install_rules("t2", [allow_all("global-modify", enabled=False)])
    assert check(engine, bridge, vector).deciding_rule == "open"

    await bridge.remove_policy("t1", "open")
    closed = check(engine, bridge, vector)
    assert closed.decision is Decision.DENY and "open" not in {e.rule_id for e in closed.evidence}

    await bridge.remove_agent_rules("t1")
    remaining = check(engine, bridge, vector)
    assert {e.rule_id for e in remaining.evidence} <= {r.rule_id for r in base if not r.agent_id}
    bridge.close()


async def test_many_small_writes_keep_answers_right(tmp_path: Path) -> None:
    # Enough writes to merge parts and to rebuild groups that are mostly dead rows.
    bridge = await Bridge.open(tmp_path / "warm_storage.bin", make_dirs=True)
    rules = tenant_rules(30)
    await bridge.install_rules("t1", rules)
    engine = EnforcementEngine(bridge)
    vectors = intents(4, rules, seed=11)
    for vector in vectors:
        check(engine, bridge, vector, layer="L1")
    rng = np.random.default_rng(2)
    for step in range(12):
        victims = [r.rule_id for r in rules if r.agent_id][step * 2 : step * 2 + 2]
        for victim in victims:
            await bridge.remove_policy("t1", victim)
        fresh = tenant_rules(3, seed=100 + step)
        fresh = [
            attrs.evolve(r, rule_id=f"new-{step}-{i}", layer=("", "L1")[i % 2])
            for i, r in enumerate(fresh)
        ]
        await bridge.install_rules("t1", fresh)
        vector = vectors[int(rng.integers(len(vectors)))]
        check(engine, bridge, vector, layer="L1")
        check(engine, bridge, vector, layer=None, drift_score=0.5)
    (group,) = [g for g in engine.evaluation_set("t1", "L1").groups if g.key == ("t1", "")]
    assert len(group.parts) <= 4
    bridge.close()


async def test_compaction_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "warm_storage.bin"
    bridge = await Bridge.open(path, make_dirs=True)
    rules = tenant_rules(16)
    await bridge.install_rules("t1", rules)
    engine = EnforcementEngine(bridge)
    vectors = intents(6, rules, seed=4)
    before = [check(engine, bridge, v) for v in vectors]

    # Compaction: a new generation with the same content and version.
    table = await trio.to_thread.run_sync(bridge.store.compact)
    assert table.generation != bridge.table.generation
    bridge.adopt(table)
    assert [check(engine, bridge, v) for v in vectors] == before

    # Another writer (another process, as far as this bridge knows) appends; a reload
    # (what a refresh adopts) brings it in: same generation, patched.
    other = WarmStore(path)
    other_table = await trio.to_thread.run_sync(other.load)
    await trio.to_thread.run_sync(
        other.append, other_table, [allow_all("outside", agent_id="t1")], []
    )
    bridge.adopt(await trio.to_thread.run_sync(bridge.store.load))
    after = [check(engine, bridge, v) for v in vectors]
    opened = [a for a, b in zip(after, before, strict=True) if b.deciding_rule == ""]
    assert opened and all(a.deciding_rule == "outside" for a in opened)

    # It compacts and removes the rule: a new generation with new content, rebuilt.
    other_table = await trio.to_thread.run_sync(other.compact)
    await trio.to_thread.run_sync(other.append, other_table, [], ["outside"])
    bridge.adopt(await trio.to_thread.run_sync(bridge.store.load))
    assert [check(engine, bridge, v) for v in vectors] == before
    other.close()
    bridge.close()


async def test_memory_budget_evicts_cold_sets_and_still_answers(tmp_path: Path) -> None:
    bridge = await Bridge.open(tmp_path / "warm_storage.bin", make_dirs=True)
    for agent in ("t1", "t2", "t3"):
        await bridge.install_rules(agent, tenant_rules(10, agent=agent))
    engine = EnforcementEngine(bridge, cache_bytes=0)  # keep only what is being evaluated
    vector = np.random.default_rng(9).standard_normal(128).tolist()
    first = {t: check(engine, bridge, vector, tenant_id=t) for t in ("t1", "t2", "t3")}
    assert engine.cached_bytes > 0
    again = {t: check(engine, bridge, vector, tenant_id=t) for t in ("t3", "t1", "t2")}
    assert first == again
    # Only what the last decision needed is kept: as much as an engine that served only t2.
    alone = EnforcementEngine(bridge, cache_bytes=0)
    alone.evaluate(vector, tenant_id="t2", layer=None, drift_score=0.0)
    assert engine.cached_bytes == alone.cached_bytes
    unbounded = EnforcementEngine(bridge)
    for t in ("t1", "t2", "t3"):
        unbounded.evaluate(vector, tenant_id=t, layer=None, drift_score=0.0)
    assert unbounded.cached_bytes > engine.cached_bytes
    bridge.close()


async def test_prepare_builds_off_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "warm_storage.bin"
    bridge = await Bridge.open(path, make_dirs=True)
    rules = tenant_rules(24)
    await bridge.install_rules("t1", rules)
    engine = EnforcementEngine(bridge)
    assert not engine.is_ready("t1", "L1")
    await engine.prepare("t1", "L1")
    assert engine.is_ready("t1", "L1")
    assert not engine.is_ready("t2", "L1")  # t2's own groups are not built yet
    vector = intents(1, rules)[0]
    prepared = check(engine, bridge, vector, layer="L1")
    # Writes since are patched in by evaluate: still ready.
    await bridge.install_rules("t1", [allow_all("late", agent_id="t1", layer="L1")])
    assert engine.is_ready("t1", "L1")
    assert check(engine, bridge, vector, layer="L1").rules_evaluated >= 1
    await engine.prepare("t1", "L1")  # nothing to do
    # A cold engine decides the same.
    assert EnforcementEngine(bridge).evaluate(
        vector, tenant_id="t1", layer="L1", drift_score=0.0
    ) == engine.evaluate(vector, tenant_id="t1", layer="L1", drift_score=0.0)
    assert prepared.rules_evaluated >= 1
    # New content under a new generation: everything is rebuilt, so not ready.
    other = WarmStore(path)
    table = await trio.to_thread.run_sync(other.compact)
    await trio.to_thread.run_sync(other.append, table, [], ["late"])
    other.close()
    bridge.adopt(await trio.to_thread.run_sync(bridge.store.load))
    assert not engine.is_ready("t1", "L1")
    await engine.prepare("t1", "L1")
    assert engine.is_ready("t1", "L1")
    check(engine, bridge, vector, layer="L1")
    bridge.close()
