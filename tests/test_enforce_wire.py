"""Enforce's wire answer built in C is byte for byte the betterproto2 one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from guardrefresh.enforce import Decision, EnforcementResult, RuleEvidence
from guardrefresh.proto import rule_installation as pb
from guardrefresh.server import enforce_response, enforce_response_bytes

floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
four = st.tuples(floats, floats, floats, floats)
text = st.text(max_size=12)

evidence = st.builds(
    RuleEvidence,
    rule_id=text,
    rule_name=text,
    decision=st.integers(0, 1),
    similarities=four,
    triggering_slice=st.sampled_from(["action", "resource", "data", "risk"]),
    anchor_matched=st.sampled_from(["", "0", "15"]),
    thresholds=four,
    scoring_mode=st.sampled_from(["min", "weighted-avg"]),
)
results = st.builds(
    EnforcementResult,
    decision=st.sampled_from(list(Decision)),
    slice_similarities=four,
    evidence=st.lists(evidence, max_size=8).map(tuple),
    modified_params=text,
    drift_triggered=st.booleans(),
)


@settings(max_examples=200)
@given(results, text)
def test_same_bytes_as_betterproto2(result: EnforcementResult, request_id: str) -> None:
    data = enforce_response_bytes(result, request_id)
    assert data == bytes(enforce_response(result, request_id))
    back = pb.EnforceResponse.parse(data)
    assert back.decision == (1 if result.decision in (Decision.ALLOW, Decision.MODIFY) else 0)
    assert back.decision_name == result.decision.name
    assert [e.rule_id for e in back.evidence] == [e.rule_id for e in result.evidence]
