"""The Enforce engine's semantics, case by case, each checked against the reference too.

In-memory warm tables (no disk): these are about decisions, not storage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from enforce_support import (
    anchors_of,
    assert_same_result,
    memory_bridge,
    scored_rule,
    slot_block,
    table_of,
    table_rules,
)

from guardrefresh.enforce import (
    Decision,
    EnforcementEngine,
    EnforcementResult,
    RuleEvidence,
    deny_result,
    reference_evaluate,
)
from guardrefresh.model import PolicyType, Rule

ONES = [1.0] * 32
FORBIDDEN, DENY, ALLOW, DEFER = (
    PolicyType.FORBIDDEN,
    PolicyType.CONTEXT_DENY,
    PolicyType.CONTEXT_ALLOW,
    PolicyType.CONTEXT_DEFER,
)


def unit(i: int) -> list[float]:
    v = [0.0] * 32
    v[i] = 1.0
    return v


def intent(*slices: Sequence[float]) -> list[float]:
    """A 128-float intent from four slices (missing slices are zero)."""
    out: list[float] = []
    for s in range(4):
        out.extend(slices[s] if s < len(slices) else [0.0] * 32)
    return out


def decide(
    rules: Sequence[Rule],
    vector: Sequence[float],
    *,
    tenant_id: str = "t1",
    layer: str | None = None,
    drift_score: float = 0.0,
) -> EnforcementResult:
    """The engine's answer, after checking it against the reference's."""
    table = table_of(rules)
    engine = EnforcementEngine(memory_bridge(table))
    got = engine.evaluate(vector, tenant_id=tenant_id, layer=layer, drift_score=drift_score)
    want = reference_evaluate(
        table_rules(table), vector, tenant_id=tenant_id, layer=layer, drift_score=drift_score
    )
    assert_same_result(got, want, table_rules(table), vector)
    return got


def matching(rule_id: str, policy: PolicyType = ALLOW, **fields: object) -> Rule:
    """A rule whose every slot matches the all-ones intent (one anchor of ones per slot)."""
    return scored_rule(rule_id, slots=[[ONES]] * 4, policy_type=policy, **fields)  # type: ignore[arg-type]


def missing(rule_id: str, policy: PolicyType = ALLOW, **fields: object) -> Rule:
    """A rule whose anchors are orthogonal to the all-ones intent's first component."""
    return scored_rule(
        rule_id,
        slots=[[unit(0)], [unit(0)], [unit(0)], [unit(0)]],  # type: ignore[arg-type]
        policy_type=policy,
        **fields,
    )


ALL_ONES = intent(ONES, ONES, ONES, ONES)


# -- the original's vector_comparison.rs expectations ------------------------------------


def test_identical_direction_scores_one() -> None:
    rule = scored_rule("r", slots=[[[0.5] * 32], [[0.5] * 32], [[0.5] * 32], [[0.5] * 32]])
    result = decide([rule], intent([0.5] * 32, [0.5] * 32, [0.5] * 32, [0.5] * 32))
    assert result.evidence[0].similarities == pytest.approx((1.0,) * 4, abs=0.01)


def test_orthogonal_scores_about_zero() -> None:
    a = [1.0] * 16 + [0.0] * 16
    b = [0.0] * 16 + [1.0] * 16
    rule = scored_rule("r", slots=[[a], [], [], []])
    result = decide([rule], intent(b))
    assert abs(result.evidence[0].similarities[0]) < 0.05


def test_zero_norm_scores_zero_not_nan() -> None:
    rule = scored_rule("r", slots=[[ONES], [ONES], [], []])
    result = decide([rule], intent([0.0] * 32, ONES))
    sims = result.evidence[0].similarities
    assert sims[0] == 0.0 and not np.isnan(sims).any()
    # ...and a zero-norm anchor scores 0 against anything.
    zero_anchor = scored_rule("z", slots=[[[0.0] * 32], [], [], []])
    assert decide([zero_anchor], ALL_ONES).evidence[0].similarities[0] == 0.0


def test_empty_anchor_set_scores_zero() -> None:
    # Count 0 fails closed even when the block holds non-zero padding.
    rule = scored_rule("r", slots=[[], [], [], []], padding=1.0)
    result = decide([rule], ALL_ONES)
    assert result.evidence[0].similarities == (0.0, 0.0, 0.0, 0.0)
    assert result.evidence[0].decision == 0


def test_single_anchor_scores_one() -> None:
    rule = scored_rule("r", slots=[[ONES], [], [], []])
    assert decide([rule], ALL_ONES).evidence[0].similarities[0] == pytest.approx(1.0, abs=0.01)


def test_min_mode_all_slices_pass() -> None:
    rule = matching("r", thresholds=(0.85,) * 4)
    result = decide([rule], [0.9] * 128)
    assert result.evidence[0].decision == 1
    assert result.decision is Decision.ALLOW


def test_min_mode_one_slice_failing_blocks() -> None:
    rule = matching("r", thresholds=(0.85,) * 4)
    result = decide([rule], intent([-1.0] * 32, ONES, ONES, ONES))
    # Opposite direction: cosine -1, folded to 0.
    assert result.evidence[0].similarities[0] == 0.0
    assert result.evidence[0].decision == 0
    assert result.decision is Decision.DENY


# -- scoring details ---------------------------------------------------------------------


def test_only_the_first_count_anchors_score() -> None:
    # Padding rows identical to the intent must not count.
    block = slot_block([[unit(0)], [], [], []], padding=1.0)
    rule = scored_rule("r", anchors=anchors_of(block, (1, 0, 0, 0)))
    result = decide([rule], ALL_ONES)
    assert result.evidence[0].similarities[0] == pytest.approx(1 / np.sqrt(32), abs=1e-6)
    assert result.evidence[0].similarities[1:] == (0.0, 0.0, 0.0)


def test_best_anchor_wins_and_is_named() -> None:
    rule = scored_rule("r", slots=[[unit(1), unit(0), ONES], [], [], []])
    result = decide([rule], intent(unit(0)))
    (evidence,) = result.evidence
    assert evidence.similarities[0] == pytest.approx(1.0)
    assert evidence.triggering_slice == "action"
    assert evidence.anchor_matched == "1"


def test_anchor_matched_is_empty_when_nothing_scores_above_zero() -> None:
    rule = scored_rule("r", slots=[[unit(1)], [], [], []])
    (evidence,) = decide([rule], intent(unit(0))).evidence
    assert evidence.similarities[0] == 0.0
    assert evidence.anchor_matched == ""


def test_triggering_slice_is_argmax_of_weighted_similarity_lower_index_on_ties() -> None:
    slots = [[unit(0)], [unit(0)], [ONES], [unit(0)]]
    weighted = scored_rule("w", slots=slots, slice_weights=(1.0, 1.0, 0.0, 4.0))
    vector = intent(unit(0), unit(0), unit(0), unit(0))
    # action, resource and risk all score 1; risk weighs most.
    assert decide([weighted], vector).evidence[0].triggering_slice == "risk"
    tied = scored_rule("t", slots=slots, slice_weights=(0.0, 2.0, 0.0, 2.0))
    assert decide([tied], vector).evidence[0].triggering_slice == "resource"
    zero = scored_rule("z", slots=slots, slice_weights=(0.0, 0.0, 0.0, 0.0))
    assert decide([zero], vector).evidence[0].triggering_slice == "action"


def test_thresholds_default_and_come_from_params() -> None:
    default = scored_rule("d", slots=[[ONES]] * 4)
    custom = scored_rule("c", slots=[[ONES]] * 4, thresholds=(0.1, 0.2, 0.3, 0.4))
    result = decide([default, custom], intent(unit(5)), tenant_id="t1")
    by_id = {e.rule_id: e for e in result.evidence}
    assert by_id["d"].thresholds == (0.75, 0.75, 0.75, 0.75)
    assert by_id["c"].thresholds == pytest.approx((0.1, 0.2, 0.3, 0.4))
    assert {e.scoring_mode for e in result.evidence} == {"min"}


def test_weighted_average_mode() -> None:
    # Action matches fully, the rest not at all: weighted mean 0.7 against a 0.75 bar
    # with weights (0.7, 0.1, 0.1, 0.1): 0.7 < 0.75 -> no match; with 0.8 on action: match.
    slots = [[ONES], [unit(0)], [unit(0)], [unit(0)]]
    vector = intent(ONES, unit(1), unit(1), unit(1))
    low = scored_rule("low", slots=slots, mode="weighted-avg", slice_weights=(0.7, 0.1, 0.1, 0.1))
    assert decide([low], vector).decision is Decision.DENY
    high = scored_rule(
        "high", slots=slots, mode="weighted-avg", slice_weights=(0.8, 0.1, 0.05, 0.05)
    )
    result = decide([high], vector)
    assert result.decision is Decision.ALLOW
    assert result.evidence[0].scoring_mode == "weighted-avg"


def test_weighted_average_with_all_zero_weights_always_matches() -> None:
    # Weight sum below 1e-8 counts as 1: score 0 against a bar of 0.
    rule = scored_rule("r", slots=[[unit(0)]] * 4, mode="weighted-avg", slice_weights=(0.0,) * 4)
    assert decide([rule], intent(unit(1))).decision is Decision.ALLOW


def test_default_weights_are_a_quarter_each() -> None:
    # No slice_weights: 0.25 each, so two slots at 1 and two at 0 give 0.5 < 0.75.
    rule = scored_rule("r", slots=[[ONES], [ONES], [unit(0)], [unit(0)]], mode="weighted-avg")
    result = decide([rule], intent(ONES, ONES, unit(1), unit(1)))
    assert result.decision is Decision.DENY
    loose = scored_rule(
        "l",
        slots=[[ONES], [ONES], [unit(0)], [unit(0)]],
        mode="weighted-avg",
        thresholds=(0.45, 0.45, 0.45, 0.45),
    )
    assert decide([loose], intent(ONES, ONES, unit(1), unit(1))).decision is Decision.ALLOW


# -- the five passes ---------------------------------------------------------------------


def test_forbidden_match_denies_before_any_allow() -> None:
    rules = [matching("allow", ALLOW, priority=100), matching("forbid", FORBIDDEN, priority=-5)]
    result = decide(rules, ALL_ONES)
    assert result.decision is Decision.DENY
    assert result.deciding_rule == "forbid"
    assert [e.rule_id for e in result.evidence] == ["forbid"]
    assert not result.drift_triggered
    assert result.allowed is False


def test_context_deny_without_drift_threshold_always_denies() -> None:
    rules = [matching("deny", DENY, drift_threshold=0.0), matching("allow", ALLOW)]
    result = decide(rules, ALL_ONES, drift_score=5.0)
    assert (result.decision, result.deciding_rule, result.drift_triggered) == (
        Decision.DENY,
        "deny",
        False,
    )


def test_context_deny_with_drift_threshold_denies_only_when_exceeded() -> None:
    rules = [matching("deny", DENY, drift_threshold=0.5), matching("allow", ALLOW)]
    exceeded = decide(rules, ALL_ONES, drift_score=0.75)
    assert (exceeded.decision, exceeded.deciding_rule, exceeded.drift_triggered) == (
        Decision.DENY,
        "deny",
        True,
    )
    within = decide(rules, ALL_ONES, drift_score=0.5)  # not strictly greater: falls through
    assert (within.decision, within.deciding_rule) == (Decision.ALLOW, "allow")
    assert [e.rule_id for e in within.evidence] == ["deny", "allow"]
    assert within.evidence[0].decision == 1  # it matched; it just did not decide


def test_context_allow_outcomes() -> None:
    plain = matching("plain", ALLOW)
    assert decide([plain], ALL_ONES).decision is Decision.ALLOW
    spec = '{"redact": ["ssn"], "limit": 10}'
    modify = matching("mod", ALLOW, modification_spec=spec)
    result = decide([modify], ALL_ONES)
    assert (result.decision, result.modified_params, result.allowed) == (
        Decision.MODIFY,
        spec,
        True,
    )
    step = matching("step", ALLOW, modification_spec=spec, drift_threshold=0.25)
    stepped = decide([step], ALL_ONES, drift_score=0.5)
    assert (stepped.decision, stepped.drift_triggered, stepped.modified_params) == (
        Decision.STEP_UP,
        True,
        "",
    )
    assert stepped.allowed is False
    calm = decide([step], ALL_ONES, drift_score=0.25)
    assert (calm.decision, calm.drift_triggered) == (Decision.MODIFY, False)


def test_context_defer_after_allow_pass() -> None:
    rules = [matching("defer", DEFER, priority=50), missing("allow", ALLOW)]
    result = decide(rules, ALL_ONES)
    assert (result.decision, result.deciding_rule) == (Decision.DEFER, "defer")
    assert [e.rule_id for e in result.evidence] == ["allow", "defer"]


def test_nothing_matching_denies_with_mean_similarities() -> None:
    rules = [
        scored_rule("a", slots=[[ONES], [], [], []]),
        scored_rule("b", slots=[[ONES], [ONES], [], []], policy_type=FORBIDDEN),
    ]
    result = decide(rules, intent(ONES, ONES))
    assert result.decision is Decision.DENY
    assert result.deciding_rule == "" and result.error == ""
    assert [e.rule_id for e in result.evidence] == ["b", "a"]
    assert result.slice_similarities == pytest.approx((1.0, 0.5, 0.0, 0.0), abs=1e-6)


def test_no_rules_in_scope_denies_with_zeros() -> None:
    result = decide([matching("other", ALLOW, agent_id="t2")], ALL_ONES, tenant_id="t1")
    assert result.decision is Decision.DENY
    assert result.evidence == () and result.rules_evaluated == 0
    assert result.slice_similarities == (0.0, 0.0, 0.0, 0.0)


def test_evaluation_order_pass_then_priority_then_id() -> None:
    rules = [
        missing("b", ALLOW, priority=1),
        missing("a", ALLOW, priority=1),
        missing("c", ALLOW, priority=9),
        missing("z", DEFER, priority=99),
        missing("y", DENY, priority=-3),
        missing("x", FORBIDDEN, priority=-7),
        missing("neg", ALLOW, priority=-1),
    ]
    result = decide(rules, ALL_ONES)
    assert [e.rule_id for e in result.evidence] == ["x", "y", "c", "a", "b", "neg", "z"]


def test_rule_name_is_the_notes_param() -> None:
    named = matching("n", ALLOW, notes="block exports")
    result = decide([named, missing("m", FORBIDDEN)], ALL_ONES)
    assert [(e.rule_id, e.rule_name) for e in result.evidence] == [
        ("m", ""),
        ("n", "block exports"),
    ]


# -- scope -------------------------------------------------------------------------------


def test_other_tenants_rules_do_not_apply_global_ones_do() -> None:
    rules = [matching("theirs", ALLOW, agent_id="t2", priority=10), missing("global", ALLOW)]
    mine = decide(rules, ALL_ONES, tenant_id="t1")
    assert mine.decision is Decision.DENY
    assert [e.rule_id for e in mine.evidence] == ["global"]
    theirs = decide(rules, ALL_ONES, tenant_id="t2")
    assert (theirs.decision, theirs.deciding_rule) == (Decision.ALLOW, "theirs")


def test_layer_filter() -> None:
    rules = [
        missing("any", ALLOW),
        missing("l1", ALLOW, layer="L1"),
        missing("l2", ALLOW, layer="L2"),
    ]
    assert [e.rule_id for e in decide(rules, ALL_ONES, layer="L1").evidence] == ["any", "l1"]
    assert [e.rule_id for e in decide(rules, ALL_ONES, layer=None).evidence] == ["any"]
    assert [e.rule_id for e in decide(rules, ALL_ONES, layer="").evidence] == ["any"]
    assert [e.rule_id for e in decide(rules, ALL_ONES, layer="L9").evidence] == ["any"]


def test_disabled_rules_are_not_evaluated() -> None:
    rules = [matching("off", FORBIDDEN, enabled=False), matching("on", ALLOW)]
    result = decide(rules, ALL_ONES)
    assert (result.decision, [e.rule_id for e in result.evidence]) == (Decision.ALLOW, ["on"])


# -- rules that cannot be scored ---------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, "missing required rule_decision"),
        ({"rule_decision": 1}, "non-string rule_decision"),
        ({"rule_decision": "max"}, "invalid rule_decision='max'"),
    ],
)
def test_unscorable_rule_fails_closed_when_reached(params: dict[str, object], problem: str) -> None:
    bad = scored_rule("bad", slots=[[ONES]] * 4, mode=None, params=params, priority=5)
    before = missing("before", ALLOW, priority=9)
    after = matching("after", ALLOW, priority=1)
    result = decide([bad, before, after], ALL_ONES)
    assert result.decision is Decision.DENY
    assert problem in result.error and "'bad'" in result.error
    assert [e.rule_id for e in result.evidence] == ["before"]
    # A decision reached before the unscorable rule stands.
    early = decide([bad, matching("forbid", FORBIDDEN)], ALL_ONES)
    assert (early.decision, early.deciding_rule, early.error) == (Decision.DENY, "forbid", "")
    assert decide([bad, matching("first", ALLOW, priority=6)], ALL_ONES).decision is Decision.ALLOW


# -- the API -----------------------------------------------------------------------------


def test_bad_vectors_are_refused() -> None:
    engine = EnforcementEngine(memory_bridge(table_of([matching("r")])))
    for vector in ([0.0] * 127, [0.0] * 129, [float("nan")] + [0.0] * 127, [1e39] * 128):
        with pytest.raises(ValueError, match="intent vector"):
            engine.evaluate(vector, tenant_id="t1", layer=None, drift_score=0.0)


def test_result_properties_and_deny_result() -> None:
    result = deny_result("encoder unreachable")
    assert (result.decision, result.decision_name, result.allowed) == (Decision.DENY, "DENY", False)
    assert result.rules_evaluated == 0 and result.error == "encoder unreachable"
    assert result.slice_similarities == (0.0, 0.0, 0.0, 0.0)
    assert [d.name for d in Decision] == ["ALLOW", "DENY", "MODIFY", "STEP_UP", "DEFER"]
    assert [d.allowed for d in Decision] == [True, False, True, False, False]
    evidence = RuleEvidence(
        rule_id="r",
        rule_name="",
        decision=1,
        similarities=(1.0, 0.0, 0.0, 0.0),
        triggering_slice="action",
        anchor_matched="0",
        thresholds=(0.75,) * 4,
        scoring_mode="min",
    )
    assert evidence._replace(decision=0).decision == 0
