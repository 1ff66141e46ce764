"""The bridge: validated all-or-nothing installs, durability, tiered lookups.

Real files in tmp_path; Trio tests (no timers involved).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio
from factories import make_rule

from guardrefresh.bridge import (
    Bridge,
    RuleConflictError,
    RuleNotFoundError,
    Tier,
    TooManyRulesError,
)
from guardrefresh.model import PolicyType, RuleValidationError
from guardrefresh.storage import WarmStore


async def open_bridge(path: Path, **kwargs: int) -> Bridge:
    return await Bridge.open(path, make_dirs=True, **kwargs)


async def test_install_is_durable_before_it_returns(store_path: Path) -> None:
    bridge = await open_bridge(store_path)
    rules = [make_rule(f"r{i}", seed=i, agent_id="a1" if i % 2 else "") for i in range(5)]
    result = await bridge.install_rules("a1", rules, config_id="c9", owner="team")
    assert result.rules_installed == 5
    assert result.rules_by_layer == {"L1": 5}
    assert result.bridge_version == 1
    # Another store object (as a fresh process would) sees it on disk already.
    on_disk = WarmStore(store_path).load()
    assert len(on_disk) == 5
    stored = on_disk.rule("r1")
    assert stored == attrs.evolve(rules[1], installed_by="a1", config_id="c9", owner="team")
    # ...and it is hot.
    assert all(f"r{i}" in bridge.cache for i in range(5))
    bridge.close()


async def test_one_bad_rule_rejects_the_whole_batch(store_path: Path) -> None:
    bridge = await open_bridge(store_path)
    await bridge.install_rules("a1", [make_rule("keep")])
    bad = attrs.evolve(make_rule("bad"), slice_weights=(1.0, 2.0, 3.0))
    with pytest.raises(RuleValidationError, match="'bad': slice_weights"):
        await bridge.install_rules("a1", [make_rule("good1"), bad, make_rule("good2")])
    with pytest.raises(RuleValidationError, match="appears more than once"):
        await bridge.install_rules("a1", [make_rule("dup"), make_rule("dup")])
    with pytest.raises(RuleValidationError, match="scoped to agent 'other'"):
        await bridge.install_rules("a1", [make_rule("x", agent_id="other")])
    assert sorted(WarmStore(store_path).load().ids()) == ["keep"]
    assert bridge.bridge_version == 1
    bridge.close()


async def test_too_many_rules_are_refused(store_path: Path) -> None:
    bridge = await open_bridge(store_path, max_rules_per_install=3)
    with pytest.raises(TooManyRulesError, match="4 rules in one request; the limit is 3"):
        await bridge.install_rules("a", [make_rule(f"r{i}") for i in range(4)])
    assert len(bridge.table) == 0
    bridge.close()


async def test_upsert_is_idempotent_and_versions_are_monotonic(store_path: Path) -> None:
    bridge = await open_bridge(store_path)
    rule = make_rule("r1", policy_type=PolicyType.CONTEXT_DEFER)
    v1 = (await bridge.install_rules("a", [rule])).bridge_version
    v2 = (await bridge.install_rules("a", [rule])).bridge_version
    changed = attrs.evolve(rule, priority=99)
    v3 = (await bridge.install_rules("a", [changed])).bridge_version
    assert v1 < v2 < v3
    assert len(bridge.table) == 1
    found = bridge.get_rule("r1")
    assert found is not None and found[0].priority == 99
    bridge.close()
    # The version survives a restart.
    again = await open_bridge(store_path)
    assert again.bridge_version == v3
    assert again.table.rule("r1") == attrs.evolve(changed, installed_by="a", config_id="", owner="")
    again.close()


async def test_rule_ids_of_other_agents_cannot_be_taken_over(store_path: Path) -> None:
    bridge = await open_bridge(store_path)
    await bridge.install_rules("alice", [make_rule("shared", agent_id="alice")])
    with pytest.raises(RuleConflictError, match="belongs to another agent"):
        await bridge.install_rules("bob", [make_rule("shared")])
    with pytest.raises(RuleConflictError, match=r"^Policy shared does not belong to agent bob$"):
        await bridge.remove_policy("bob", "shared")
    assert await bridge.remove_policy("alice", "shared") == 1
    with pytest.raises(RuleNotFoundError, match=r"^Policy not found: shared$"):
        await bridge.remove_policy("alice", "shared")
    bridge.close()


async def test_remove_agent_rules_removes_scoped_and_installed(store_path: Path) -> None:
    bridge = await open_bridge(store_path)
    await bridge.install_rules("a", [make_rule("a-scoped", agent_id="a"), make_rule("a-global")])
    await bridge.install_rules("b", [make_rule("b-scoped", agent_id="b")])
    assert await bridge.remove_agent_rules("a") == 2
    assert await bridge.remove_agent_rules("a") == 0
    assert sorted(bridge.table.ids()) == ["b-scoped"]
    assert "a-scoped" not in bridge.cache and "a-global" not in bridge.cache
    assert sorted(WarmStore(store_path).load().ids()) == ["b-scoped"]
    bridge.close()


async def test_tiered_lookup_promotes_warm_rules(store_path: Path) -> None:
    bridge = await open_bridge(store_path, hot_capacity=2)
    await bridge.install_rules("a", [make_rule(f"r{i}", seed=i) for i in range(4)])
    # Capacity 2: r0 and r1 were evicted by the later installs.
    assert "r0" not in bridge.cache
    found = bridge.get_rule("r0")
    assert found is not None and found[1] is Tier.WARM
    found = bridge.get_rule("r0")
    assert found is not None and found[1] is Tier.HOT
    expected = attrs.evolve(make_rule("r0", seed=0), installed_by="a", config_id="", owner="")
    assert found[0] == expected
    assert bridge.get_rule("missing") is None
    bridge.close()


async def test_rule_stats_one_row_per_family_and_layer(store_path: Path) -> None:
    bridge = await open_bridge(store_path)
    await bridge.install_rules(
        "a",
        [
            make_rule("g1", family_id="net", layer="L1"),
            make_rule("s1", family_id="net", layer="L1", agent_id="a"),
            make_rule("s2", family_id="net", layer="L2", agent_id="a"),
            make_rule("g2", family_id="fs", layer="L1"),
        ],
    )
    v2 = (
        await bridge.install_rules("a", [make_rule("g3", family_id="fs", layer="L1")])
    ).bridge_version
    stats = bridge.rule_stats()
    rows = {(t.family_id, t.layer_id): t for t in stats.tables}
    assert sorted(rows) == [("fs", "L1"), ("net", "L1"), ("net", "L2")]
    assert (rows[("net", "L1")].rule_count, rows[("net", "L1")].global_count) == (2, 1)
    assert rows[("net", "L1")].scoped_count == 1
    assert rows[("fs", "L1")].rule_count == 2 and rows[("fs", "L1")].version == v2
    assert rows[("net", "L2")].version == 1
    assert (stats.total_rules, stats.total_global_rules, stats.total_scoped_rules) == (5, 3, 2)
    bridge.close()


async def test_cancelled_install_still_lands_consistently(store_path: Path) -> None:
    bridge = await open_bridge(store_path)
    with trio.CancelScope() as scope:
        scope.cancel()  # already cancelled when the write starts
        await bridge.install_rules("a", [make_rule("r1")])
    # The commit is shielded: memory and disk agree either way.
    on_disk = sorted(WarmStore(store_path).load().ids())
    assert on_disk == sorted(bridge.table.ids())
    bridge.close()


async def test_storage_failure_changes_nothing(store_path: Path) -> None:
    bridge = await open_bridge(store_path)
    await bridge.install_rules("a", [make_rule("r1")])
    journal = next(store_path.parent.glob("*.journal"))
    before = journal.read_bytes()
    journal.unlink()
    bridge.store.close()  # drop the cached descriptor so the missing file is noticed
    from guardrefresh.storage import StorageError

    with pytest.raises(StorageError):
        await bridge.install_rules("a", [make_rule("r2")])
    assert sorted(bridge.table.ids()) == ["r1"]
    assert "r2" not in bridge.cache
    journal.write_bytes(before)
    journal.chmod(0o600)
    await bridge.install_rules("a", [make_rule("r2")])
    assert sorted(WarmStore(store_path).load().ids()) == ["r1", "r2"]
    bridge.close()
