"""Helpers for the Enforce tests: rules as the engine scores them, in-memory warm tables,
and the comparison of an engine result with the reference's.

Import as ``from enforce_support import ...`` (tests/ is on ``sys.path``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from guardrefresh.bridge import Bridge
from guardrefresh.enforce import EnforcementResult, rule_scoring
from guardrefresh.enforce._params import effective_weights
from guardrefresh.enforce._reference import evaluation_order, slot_similarity
from guardrefresh.model import BLOCK_SHAPE, PolicyType, Rule, RuleAnchors
from guardrefresh.storage import Segment, WarmStore, WarmTable
from guardrefresh.storage._encode import SegmentColumns, segment_bytes
from guardrefresh.storage._segment import decode_segment

#: Similarities of the engine (float32) and the reference (float64) agree within this.
SIM_TOL = 1e-5


def anchors_of(block: np.ndarray, counts: Sequence[int]) -> RuleAnchors:
    """RuleAnchors straight from a (4, 16, 32) block: rows past the counts may be non-zero
    (padding as the management plane may send it), which the engine must ignore."""
    vectors = np.array(block, dtype=np.float32).reshape(BLOCK_SHAPE)
    vectors.flags.writeable = False
    scored = (int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3]))
    # Rows sent: up to the last non-zero one (padding is stored as sent), at least the count.
    nonzero = vectors.any(axis=2)
    sent = tuple(
        max(scored[s], int(np.flatnonzero(nonzero[s]).max()) + 1 if nonzero[s].any() else 0)
        for s in range(4)
    )
    return RuleAnchors(vectors, scored, (sent[0], sent[1], sent[2], sent[3]))


def slot_block(slots: Sequence[Sequence[Sequence[float]]], *, padding: float = 0.0) -> np.ndarray:
    """A (4, 16, 32) block with the given anchors per slot and ``padding`` everywhere else."""
    block = np.full(BLOCK_SHAPE, padding, dtype=np.float32)
    for s, vectors in enumerate(slots):
        for i, vector in enumerate(vectors):
            block[s, i] = vector
    return block


def scored_rule(
    rule_id: str,
    *,
    slots: Sequence[Sequence[Sequence[float]]] = ((), (), (), ()),
    padding: float = 0.0,
    mode: str | None = "min",
    thresholds: Sequence[float] | None = None,
    notes: str | None = None,
    **fields: Any,
) -> Rule:
    """A rule as the management plane would send it: params ``rule_decision``,
    ``thresholds`` (JSON, keys sorted) and ``notes``; anchors from ``slots``."""
    params: dict[str, Any] = {"rule_type": "design_boundary"}
    if mode is not None:
        params["rule_decision"] = mode
    if thresholds is not None:
        doc = dict(zip(("action", "resource", "data", "risk"), thresholds, strict=True))
        params["thresholds"] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    if notes is not None:
        params["notes"] = notes
    params.update(fields.pop("params", {}))
    counts = [len(vectors) for vectors in slots]
    values: dict[str, Any] = {
        "priority": 0,
        "policy_type": PolicyType.CONTEXT_ALLOW,
        "anchors": anchors_of(slot_block(slots, padding=padding), counts),
        "params": params,
    }
    values.update(fields)
    return Rule(rule_id=rule_id, **values)


def segment_of(rules: Sequence[Rule], version: int, deleted: Sequence[str] = ()) -> Segment:
    """A decoded in-memory segment (as a store write would produce it, without a disk)."""
    columns = SegmentColumns.from_rules(rules, bridge_version=version, deleted_ids=deleted)
    data = segment_bytes(columns)
    return decode_segment(memoryview(data), 0, path=Path("memory"), what="test segment")


def table_of(rules: Sequence[Rule], version: int = 1) -> WarmTable:
    return WarmTable.build(segment_of(rules, version), [], generation=1)


def memory_bridge(table: WarmTable, *, hot_capacity: int = 10_000) -> Bridge:
    """A Bridge over an in-memory table (reads only: nothing is ever written)."""
    return Bridge(
        WarmStore(Path("/nonexistent/warm_storage.bin")), table, hot_capacity=hot_capacity
    )


def table_rules(table: WarmTable) -> list[Rule]:
    rules = [table.rule(rule_id) for rule_id in table.ids()]
    return [rule for rule in rules if rule is not None]


# -- comparing with the reference --------------------------------------------------------


def _slot_details(rule: Rule, vector: Sequence[float]) -> list[list[float]]:
    """Per slot, the reference cosine of every real anchor (floored at 0 as folded)."""
    from guardrefresh.enforce._reference import cosine

    out = []
    for s in range(4):
        intent = vector[s * 32 : (s + 1) * 32]
        out.append(
            [
                max(0.0, cosine(intent, rule.anchors.vectors[s, i].tolist()))
                for i in range(rule.anchors.counts[s])
            ]
        )
    return out


def _exact_zero(rule: Rule, vector: Sequence[float], s: int) -> bool:
    """Whether slot ``s`` scores exactly 0 in any implementation: no usable anchor, or
    a zero intent slice."""
    intent = np.asarray(vector[s * 32 : (s + 1) * 32], dtype=np.float64)
    if math.sqrt(float(intent @ intent)) < 1e-8:
        return True
    real = rule.anchors.vectors[s, : rule.anchors.counts[s]].astype(np.float64)
    return not (np.sqrt((real * real).sum(axis=1)) >= 1e-8).any()


def fragile(
    rules: Sequence[Rule], vector: Sequence[float], tenant_id: str, layer: str | None
) -> bool:
    """Whether some in-scope rule's match is within float rounding of its threshold, so
    that float32 and float64 arithmetic may honestly disagree on it."""
    for rule in evaluation_order(rules, tenant_id, layer):
        scoring = rule_scoring(rule.rule_id, rule.params)
        if scoring.error:
            continue
        sims = []
        exact = []
        for s in range(4):
            similarity, _ = slot_similarity(
                vector[s * 32 : (s + 1) * 32],
                [rule.anchors.vectors[s, i].tolist() for i in range(rule.anchors.counts[s])],
            )
            sims.append(similarity)
            exact.append(_exact_zero(rule, vector, s))
        weights = effective_weights(rule.slice_weights)
        outcomes = set()
        for sign in (-1.0, 1.0):
            moved = []
            for s in range(4):
                if exact[s]:
                    moved.append(sims[s])
                    continue
                step = sign * SIM_TOL * (1.0 if scoring.mode == "min" or weights[s] >= 0 else -1.0)
                moved.append(min(1.0, max(0.0, sims[s] + step)))
            outcomes.add(_matches(moved, scoring.thresholds, weights, scoring.mode))
        if len(outcomes) > 1:
            return True
    return False


def _matches(
    sims: list[float], thresholds: Sequence[float], weights: Sequence[float], mode: str
) -> bool:
    if mode == "min":
        return all(sims[s] >= thresholds[s] for s in range(4))
    total = sum(weights)
    if total < 1e-8:
        total = 1.0
    score = sum(sims[s] * weights[s] for s in range(4)) / total
    return score >= sum(thresholds[s] * weights[s] for s in range(4)) / total


def assert_same_result(
    got: EnforcementResult,
    want: EnforcementResult,
    rules: Sequence[Rule] = (),
    vector: Sequence[float] = (),
) -> None:
    """The engine's result equals the reference's: exactly, except similarities (within
    SIM_TOL) and, where float rounding makes them ambiguous, the triggering slice and
    anchor index (which must then be one of the near-tied candidates)."""
    assert got.decision == want.decision, (
        got.decision_name,
        want.decision_name,
        got.error,
        want.error,
    )
    assert got.decision_name == want.decision_name
    assert got.allowed == want.allowed
    assert [e.rule_id for e in got.evidence] == [e.rule_id for e in want.evidence]
    assert got.rules_evaluated == want.rules_evaluated
    assert got.modified_params == want.modified_params
    assert got.drift_triggered == want.drift_triggered
    assert got.deciding_rule == want.deciding_rule
    assert got.error == want.error
    assert len(got.slice_similarities) == 4
    np.testing.assert_allclose(
        got.slice_similarities, want.slice_similarities, atol=SIM_TOL, rtol=0
    )
    by_id = {rule.rule_id: rule for rule in rules}
    for mine, theirs in zip(got.evidence, want.evidence, strict=True):
        assert type(mine) is type(theirs)
        assert mine.rule_name == theirs.rule_name
        assert mine.decision == theirs.decision, mine.rule_id
        assert mine.thresholds == theirs.thresholds
        assert mine.scoring_mode == theirs.scoring_mode
        np.testing.assert_allclose(mine.similarities, theirs.similarities, atol=SIM_TOL, rtol=0)
        rule = by_id.get(mine.rule_id)
        if rule is None:
            assert mine.triggering_slice == theirs.triggering_slice
            assert mine.anchor_matched == theirs.anchor_matched
            continue
        _check_trigger(mine, theirs, rule, vector)


def _check_trigger(mine: Any, theirs: Any, rule: Rule, vector: Sequence[float]) -> None:
    names = ("action", "resource", "data", "risk")
    weights = effective_weights(rule.slice_weights)
    products = [theirs.similarities[s] * weights[s] for s in range(4)]
    top = max(products)
    slack = 2 * SIM_TOL * (1.0 + max(abs(w) for w in weights))
    candidates = {names[s] for s in range(4) if products[s] >= top - slack}
    assert mine.triggering_slice in candidates, (mine, theirs)
    if len(candidates) == 1:
        assert mine.triggering_slice == theirs.triggering_slice
    slot = names.index(mine.triggering_slice)
    details = _slot_details(rule, vector)[slot]
    best = max(details, default=0.0)
    allowed = {
        str(i) for i, value in enumerate(details) if value > 0 and value >= best - 2 * SIM_TOL
    }
    if best < 2 * SIM_TOL:
        allowed.add("")
    assert mine.anchor_matched in allowed, (mine, details)


def with_fields(rule: Rule, **fields: Any) -> Rule:
    return attrs.evolve(rule, **fields)
