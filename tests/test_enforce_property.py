"""Property: the vectorised engine decides exactly as the scalar reference, on random rule
sets and intents, before and after the rule set changes (installs, upserts, removals).

Rules are built with RuleAnchors blocks directly, so counts of 0-16 come with non-zero
padding rows past the count. The bridge runs with a tiny hot capacity throughout.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from enforce_support import (
    anchors_of,
    assert_same_result,
    fragile,
    memory_bridge,
    segment_of,
    table_of,
    table_rules,
)
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from guardrefresh.enforce import EnforcementEngine, reference_evaluate
from guardrefresh.model import BLOCK_SHAPE, PolicyType, Rule

TENANTS = ("t0", "t1", "t2")
LAYERS = ("", "L1", "L2")
_weights = st.one_of(
    st.just(()),
    st.just((0.0, 0.0, 0.0, 0.0)),
    st.just((1.0, 1.0, 1.0, 1.0)),
    st.tuples(*[st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 2.0])] * 4),
    st.tuples(*[st.floats(-1.0, 3.0, width=32)] * 4),
)
_threshold = st.sampled_from([0.0, 0.2, 0.5, 0.6, 0.75, 0.9, 1.0]) | st.floats(-0.5, 1.25, width=32)


@st.composite
def params(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {"rule_type": "design_boundary"}
    mode: object = draw(st.sampled_from(["min", "weighted-avg"]))
    if draw(st.integers(0, 19)) == 0:  # now and then a rule that cannot be scored
        mode = draw(st.sampled_from([None, "avg", 1]))
    if mode is not None:
        out["rule_decision"] = mode
    kind = draw(st.sampled_from(["object", "object", "object", "absent", "array", "garbage"]))
    values = [draw(_threshold) for _ in range(4)]
    if kind == "object":
        out["thresholds"] = json.dumps(
            dict(zip(("action", "resource", "data", "risk"), values, strict=True)), sort_keys=True
        )
    elif kind == "array":
        out["thresholds"] = json.dumps(values)
    elif kind == "garbage":
        out["thresholds"] = draw(st.sampled_from(['{"action": 0.1}', "nope", "[1,2]"]))
    if draw(st.booleans()):
        out["notes"] = draw(st.sampled_from(["", "note", "ünïcode"]))
    return out


@st.composite
def rule_sets(draw: st.DrawFn, ids: list[str]) -> list[Rule]:
    rules = []
    for rule_id in ids:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        counts = [
            draw(st.sampled_from([0, 1, 1, 1, 2, 3, 16]) | st.integers(0, 16)) for _ in range(4)
        ]
        block = rng.standard_normal(BLOCK_SHAPE).astype(np.float32)  # padding included
        for s in range(4):
            if counts[s] and draw(st.integers(0, 7)) == 0:
                block[s, rng.integers(counts[s])] = 0.0  # a zero anchor among the real ones
        rules.append(
            Rule(
                rule_id=rule_id,
                layer=draw(st.sampled_from(LAYERS)),
                agent_id=draw(st.sampled_from(("", *TENANTS))),
                priority=draw(st.integers(-2, 2) | st.integers(-(2**31), 2**31 - 1)),
                enabled=draw(st.integers(0, 5)) > 0,
                params=draw(params()),
                anchors=anchors_of(block, counts),
                policy_type=draw(st.sampled_from(PolicyType)),
                drift_threshold=draw(st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0])),
                modification_spec=draw(st.sampled_from(["", "", '{"redact": ["ssn"]}', "null"])),
                slice_weights=draw(_weights),
            )
        )
    return rules


@st.composite
def requests(draw: st.DrawFn, rules: list[Rule]) -> tuple[list[float], str, str | None, float]:
    """(vector, tenant, layer, drift score). Mostly aimed at one rule: the request is in its
    scope and each slice is a noisy copy of one of its real anchors, so that matches
    happen; otherwise slices are random or zero and the scope is drawn freely."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vector = np.zeros((4, 32), dtype=np.float32)
    target = draw(st.sampled_from(rules)) if rules and draw(st.integers(0, 4)) else None
    for s in range(4):
        kind = draw(st.sampled_from(["anchor"] * 8 + ["random", "zero"]))
        if kind == "anchor" and target is not None and target.anchors.counts[s]:
            anchor = target.anchors.vectors[s, draw(st.integers(0, target.anchors.counts[s] - 1))]
            noise = draw(st.sampled_from([0.0, 0.0, 0.05, 0.2, 0.5, 1.0]))
            scale = draw(st.sampled_from([1.0, 3.0, 0.01]))
            vector[s] = anchor * scale + noise * scale * rng.standard_normal(32)
        elif kind != "zero":
            vector[s] = rng.standard_normal(32)
    tenant = draw(st.sampled_from(TENANTS))
    layer = draw(st.sampled_from([None, "", "L1", "L2", "L3"]))
    if target is not None and draw(st.integers(0, 3)):
        tenant = target.agent_id or tenant
        layer = target.layer or layer
    drift = draw(st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 2.0]))
    return vector.reshape(-1).tolist(), tenant, layer, drift


_ids = st.lists(st.text("abcd", min_size=1, max_size=3), min_size=0, max_size=12, unique=True)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_engine_matches_reference(data: st.DataObject) -> None:
    ids = data.draw(_ids, label="ids")
    base = data.draw(rule_sets(ids), label="base")
    table = table_of(base)
    bridge = memory_bridge(table, hot_capacity=3)
    engine = EnforcementEngine(bridge)
    version = 1
    for step in range(3):
        rules = table_rules(table)
        for _ in range(2):
            vector, tenant, layer, drift = data.draw(requests(rules), label="request")
            assume(not fragile(rules, vector, tenant, layer))
            got = engine.evaluate(vector, tenant_id=tenant, layer=layer, drift_score=drift)
            want = reference_evaluate(
                rules, vector, tenant_id=tenant, layer=layer, drift_score=drift
            )
            assert_same_result(got, want, rules, vector)
            how = "by a rule" if got.deciding_rule else "error" if got.error else "fail-closed"
            event(f"{got.decision_name} {how}{', drift' if got.drift_triggered else ''}")
        if step == 2:
            break
        # Change the rule set the way writes do: a journal segment with upserts (new rules
        # and new versions of old ones) and removals.
        existing = sorted(table.ids())
        removed = (
            data.draw(st.lists(st.sampled_from(existing), unique=True, max_size=3))
            if existing
            else []
        )
        new_ids = data.draw(
            st.lists(st.text("abcde", min_size=1, max_size=3), unique=True, max_size=4),
            label="upserts",
        )
        upserts = data.draw(
            rule_sets([i for i in new_ids if i not in removed]), label="upsert rules"
        )
        version += 1
        table = table.with_segment(segment_of(upserts, version, deleted=removed))
        bridge.adopt(table)
