"""The executable specification of Enforce: a plain, scalar, obviously-correct evaluator.

:func:`reference_evaluate` states the semantics with the obvious loops over rules,
slots and anchors, in double precision, one rule at a time. The engine
(:class:`~guardrefresh.enforce.EnforcementEngine`) must give the same answers; the
property tests compare the two on random rule sets, and the benchmark measures the
engine against this. Far too slow to serve with (about a second per thousand rules
with full anchors).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..model import ANCHOR_DIM, PolicyType, Rule
from ._params import effective_weights, rule_scoring
from ._result import (
    MODE_MIN,
    SLOT_NAMES,
    Decision,
    EnforcementResult,
    RuleEvidence,
    deny_result,
)

#: The passes, in evaluation order.
PASSES = (
    PolicyType.FORBIDDEN,
    PolicyType.CONTEXT_DENY,
    PolicyType.CONTEXT_ALLOW,
    PolicyType.CONTEXT_DEFER,
)
#: Below this norm a vector scores 0 against anything.
MIN_NORM = 1e-8


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity clamped to [-1, 1]; 0 when either norm is below :data:`MIN_NORM`."""
    dot = 0.0
    norm_a = 0.0
    norm_b = 0.0
    for x, y in zip(a, b, strict=True):
        dot += float(x) * float(y)
        norm_a += float(x) * float(x)
        norm_b += float(y) * float(y)
    norm_a = math.sqrt(norm_a)
    norm_b = math.sqrt(norm_b)
    if norm_a < MIN_NORM or norm_b < MIN_NORM:
        return 0.0
    return min(1.0, max(-1.0, dot / (norm_a * norm_b)))


def slot_similarity(
    intent: Sequence[float], anchors: Sequence[Sequence[float]]
) -> tuple[float, int]:
    """The best cosine of ``intent`` over ``anchors``, folded from 0.0, and its anchor index.

    The index is -1 when no anchor scores above 0 (no anchors, or none similar).
    """
    best = 0.0
    index = -1
    for i, anchor in enumerate(anchors):
        similarity = cosine(intent, anchor)
        if similarity > best:
            best = similarity
            index = i
    return best, index


def in_scope(rule: Rule, tenant_id: str, layer: str | None) -> bool:
    """Whether Enforce for ``tenant_id`` at ``layer`` considers ``rule``."""
    if not rule.enabled:
        return False
    if rule.agent_id not in ("", tenant_id):
        return False
    # A rule without a layer applies to every request; one with a layer only to
    # requests for that layer (a request without a layer sees only layerless rules).
    return rule.layer == "" or rule.layer == (layer or "")


def evaluation_order(rules: Iterable[Rule], tenant_id: str, layer: str | None) -> list[Rule]:
    """The rules in scope, in the order they are evaluated: pass by pass (forbidden,
    context_deny, context_allow, context_defer), within a pass by priority descending,
    then rule id ascending."""
    scoped = [rule for rule in rules if in_scope(rule, tenant_id, layer)]
    scoped.sort(key=lambda rule: (-rule.priority, rule.rule_id))
    ordered: list[Rule] = []
    for policy in PASSES:
        ordered.extend(rule for rule in scoped if rule.policy_type is policy)
    return ordered


def reference_evaluate(
    rules: Iterable[Rule],
    vector: Sequence[float],
    *,
    tenant_id: str,
    layer: str | None,
    drift_score: float,
) -> EnforcementResult:
    """Evaluate ``vector`` (128 floats: four 32-float slots) against ``rules``.

    ``rules`` may hold every rule of the store: scope (enabled, tenant, layer) is
    applied here.
    """
    if len(vector) != 4 * ANCHOR_DIM:
        raise ValueError(f"the intent vector has {len(vector)} values, expected 128")
    slices = [vector[s * ANCHOR_DIM : (s + 1) * ANCHOR_DIM] for s in range(4)]
    evidence: list[RuleEvidence] = []
    for rule in evaluation_order(rules, tenant_id, layer):
        scoring = rule_scoring(rule.rule_id, rule.params)
        if scoring.error:
            # The original failed the whole request here; we fail closed.
            return deny_result(scoring.error, evidence=tuple(evidence))
        weights = effective_weights(rule.slice_weights)
        thresholds = scoring.thresholds
        similarities: list[float] = []
        best_anchor: list[int] = []
        for s in range(4):
            count = rule.anchors.counts[s]
            anchors = [rule.anchors.vectors[s, i].tolist() for i in range(count)]
            similarity, index = slot_similarity(slices[s], anchors)
            similarities.append(similarity)
            best_anchor.append(index)

        if scoring.mode == MODE_MIN:
            matched = all(similarities[s] >= thresholds[s] for s in range(4))
        else:
            weight_sum = sum(weights)
            if weight_sum < 1e-8:
                weight_sum = 1.0
            score = sum(similarities[s] * weights[s] for s in range(4)) / weight_sum
            bar = sum(thresholds[s] * weights[s] for s in range(4)) / weight_sum
            matched = score >= bar

        trigger = 0
        for s in range(1, 4):
            if similarities[s] * weights[s] > similarities[trigger] * weights[trigger]:
                trigger = s
        anchor = best_anchor[trigger]
        sims = (similarities[0], similarities[1], similarities[2], similarities[3])
        evidence.append(
            RuleEvidence(
                rule_id=rule.rule_id,
                rule_name=scoring.name,
                decision=1 if matched else 0,
                similarities=sims,
                triggering_slice=SLOT_NAMES[trigger],
                anchor_matched=str(anchor) if anchor >= 0 else "",
                thresholds=thresholds,
                scoring_mode=scoring.mode,
            )
        )
        if not matched:
            continue

        threshold = rule.drift_threshold
        drifted = threshold > 0 and drift_score > threshold
        policy = rule.policy_type
        if policy is PolicyType.FORBIDDEN:
            return _decided(Decision.DENY, sims, evidence, rule)
        if policy is PolicyType.CONTEXT_DENY:
            if threshold > 0 and not drifted:
                continue  # drift within the rule's threshold: this rule does not deny
            return _decided(Decision.DENY, sims, evidence, rule, drift_triggered=drifted)
        if policy is PolicyType.CONTEXT_ALLOW:
            if drifted:
                return _decided(Decision.STEP_UP, sims, evidence, rule, drift_triggered=True)
            if rule.modification_spec:
                return _decided(
                    Decision.MODIFY, sims, evidence, rule, modified=rule.modification_spec
                )
            return _decided(Decision.ALLOW, sims, evidence, rule)
        return _decided(Decision.DEFER, sims, evidence, rule)

    # Nothing decided: fail closed, with the mean similarities of everything evaluated.
    mean = [0.0, 0.0, 0.0, 0.0]
    for entry in evidence:
        for s in range(4):
            mean[s] += entry.similarities[s]
    if evidence:
        mean = [total / len(evidence) for total in mean]
    return EnforcementResult(Decision.DENY, tuple(mean), tuple(evidence))


def _decided(
    decision: Decision,
    similarities: tuple[float, ...],
    evidence: list[RuleEvidence],
    rule: Rule,
    *,
    drift_triggered: bool = False,
    modified: str = "",
) -> EnforcementResult:
    return EnforcementResult(
        decision,
        similarities,
        tuple(evidence),
        modified_params=modified,
        drift_triggered=drift_triggered,
        deciding_rule=rule.rule_id,
    )
