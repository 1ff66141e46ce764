"""The session record: the original's JSON field names, decisions, intent capping, identity."""

from __future__ import annotations

import json
import math

import attrs
import pytest
from telemetry_support import Evidence, Result, make_session

from guardrefresh.telemetry import (
    DECISION_NAMES,
    INTENT_JSON_LIMIT,
    Durations,
    EnforcementSession,
    EnforceRecorder,
    cap_intent_json,
    decision_name_of,
    intent_identity,
    intent_summary,
    legacy_decision,
    session_from_outcome,
)

# The fields of the original data plane's EnforcementSession and its parts (session.rs):
# a tool built for it deserialises our documents only if every one of them is present.
ORIGINAL_SESSION_FIELDS = {
    "session_id", "timestamp_ms", "layer", "agent_id", "tenant_id", "intent_json",
    "intent_vector", "events", "rules_evaluated", "final_decision", "final_similarities",
    "duration_us", "performance", "error",
}  # fmt: skip
ORIGINAL_RULE_FIELDS = {
    "rule_id", "rule_family", "priority", "description", "started_at_us", "duration_us",
    "decision", "slice_similarities", "thresholds", "anchor_counts", "short_circuited",
    "slice_details",
}  # fmt: skip
ORIGINAL_SLICE_FIELDS = {
    "slice_name", "similarity", "threshold", "passed", "anchor_count", "best_anchor_idx",
}  # fmt: skip
ORIGINAL_PERFORMANCE_FIELDS = {
    "encoding_duration_us", "rule_query_duration_us", "evaluation_duration_us",
    "total_duration_us", "rules_queried", "rules_evaluated", "short_circuited",
}  # fmt: skip


def test_document_carries_every_original_field_with_the_original_types() -> None:
    session = make_session("req-1", decision="DENY", rules=3, total_us=2500)
    doc = json.loads(session.to_json())
    assert doc.keys() >= ORIGINAL_SESSION_FIELDS
    assert doc["session_id"] == "req-1"
    assert doc["tenant_id"] == "tenant-a" and doc["agent_id"] == "agent-a"
    assert doc["layer"] == "L4"
    assert doc["final_decision"] == 0 and doc["decision_name"] == "DENY"
    assert doc["duration_us"] == 2500
    assert doc["final_similarities"] == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert json.loads(doc["intent_json"])["tool_name"] == "web_search"
    assert doc["performance"].keys() >= ORIGINAL_PERFORMANCE_FIELDS
    assert doc["performance"] == {
        "encoding_duration_us": 100,
        "rule_query_duration_us": 20,
        "evaluation_duration_us": 300,
        "total_duration_us": 2500,
        "rules_queried": 3,
        "rules_evaluated": 3,
        "short_circuited": False,
    }
    assert len(doc["rules_evaluated"]) == 3
    for rule in doc["rules_evaluated"]:
        assert rule.keys() >= ORIGINAL_RULE_FIELDS
        assert len(rule["slice_similarities"]) == 4 and len(rule["thresholds"]) == 4
        assert len(rule["anchor_counts"]) == 4
        for detail in rule["slice_details"]:
            assert detail.keys() >= ORIGINAL_SLICE_FIELDS
    last = doc["rules_evaluated"][-1]
    assert last["rule_id"] == "deciding-deny" and last["decision"] == 1
    assert last["scoring_mode"] == "min" and last["triggering_slice"] == "action"
    assert doc["deciding_rule_id"] == "deciding-deny"
    # Tagged events, as the original's serde enum: {"type": "final_decision", ...}.
    assert doc["events"][-1]["type"] == "final_decision"
    assert doc["events"][-1]["decision"] == 0
    assert doc["drift_score"] == 0.25 and doc["drift_triggered"] is False
    assert doc["error"] is None and doc["intent_truncated"] is False


@pytest.mark.parametrize(
    ("name", "legacy"),
    [("ALLOW", 1), ("MODIFY", 1), ("DENY", 0), ("STEP_UP", 0), ("DEFER", 0)],
)
def test_final_decision_is_the_originals_zero_one(name: str, legacy: int) -> None:
    assert legacy_decision(name) == legacy
    assert make_session("s", decision=name).final_decision == legacy


def test_decision_names_from_strings_enums_and_legacy_ints() -> None:
    import enum

    class Decision(enum.Enum):
        ALLOW = "allow"
        STEP_UP = "step_up"

    assert decision_name_of("deny") == "DENY"
    assert decision_name_of("step-up") == "STEP_UP"
    assert decision_name_of(Decision.STEP_UP) == "STEP_UP"
    assert decision_name_of(Decision.ALLOW) == "ALLOW"
    assert decision_name_of(1) == "ALLOW" and decision_name_of(0) == "DENY"
    # What cannot be understood never reads as allowed.
    assert decision_name_of("maybe") == "DENY"
    assert decision_name_of(None) == "DENY"
    assert set(DECISION_NAMES) == {"ALLOW", "DENY", "MODIFY", "STEP_UP", "DEFER"}


def test_a_fail_closed_call_without_result_is_a_deny_with_its_error() -> None:
    session = EnforcementSession.from_outcome(
        session_id="req-9",
        intent_json='{"action": "read"}',
        tenant_id="t",
        error="encoder unavailable: connection refused",
        durations=Durations(total_us=42),
    )
    doc = json.loads(session.to_json())
    assert doc["final_decision"] == 0 and doc["decision_name"] == "DENY"
    assert doc["rules_evaluated"] == [] and doc["final_similarities"] is None
    assert doc["error"] == "encoder unavailable: connection refused"
    assert [e["type"] for e in doc["events"]] == ["error", "final_decision"]
    assert doc["deciding_rule_id"] == ""
    assert session.summary() == "read"


def test_modified_params_and_empty_session_id() -> None:
    result = Result(
        decision="MODIFY",
        evidence=[Evidence("r1", decision=1)],
        modified_params={"redact": ["ssn"]},
        drift_triggered=True,
    )
    session = EnforcementSession.from_outcome(session_id="", intent_json="{}", result=result)
    assert len(session.session_id) == 36  # a fresh UUID
    doc = json.loads(session.to_json())
    assert json.loads(doc["modified_params"]) == {"redact": ["ssn"]}
    assert doc["drift_triggered"] is True and doc["final_decision"] == 1


def test_intent_json_is_capped_at_16_kib_on_a_character_boundary() -> None:
    short = '{"a": "é"}'
    assert cap_intent_json(short) == (short, False)
    long = '{"note": "' + "é" * INTENT_JSON_LIMIT + '"}'
    capped, truncated = cap_intent_json(long)
    assert truncated
    assert len(capped.encode()) <= INTENT_JSON_LIMIT
    assert long.startswith(capped)
    session = make_session("big", intent_extra="x" * (2 * INTENT_JSON_LIMIT))
    doc = json.loads(session.to_json())
    assert doc["intent_truncated"] is True
    assert len(doc["intent_json"].encode()) == INTENT_JSON_LIMIT


def test_intent_summary_and_identity() -> None:
    assert intent_summary('{"tool_name": "web_search", "action": "read"}') == "web_search"
    assert intent_summary('{"action": "read"}') == "read"
    assert intent_summary("not json") == "unknown"
    assert intent_summary('["a"]') == "unknown"
    intent = {
        "tenant_id": "t1",
        "layer": "L4",
        "rate_limit_context": {"agentId": "rl-agent"},
        "actor": {"id": "actor-1"},
    }
    assert intent_identity(intent) == ("t1", "rl-agent", "L4")
    assert intent_identity({"actor": {"id": "actor-1"}}) == ("", "actor-1", "")
    assert intent_identity({"rate_limit_context": {"agentId": 5}, "actor": "x"}) == ("", "", "")


def test_non_finite_similarities_become_null_so_strict_parsers_accept_the_json() -> None:
    result = Result(decision="DENY", slice_similarities=(math.nan, 1.0, math.inf, 0.0))
    session = EnforcementSession.from_outcome(session_id="n", intent_json="{}", result=result)
    text = session.to_json()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON: {c}"))
    assert doc["final_similarities"] == [None, 1.0, None, 0.0]


def test_bad_values_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="decision_name"):
        EnforcementSession(session_id="x", timestamp_ms=0, decision_name="MAYBE")
    with pytest.raises(ValueError, match="total_us"):
        Durations(total_us=-1)


@attrs.frozen
class _Intent:
    raw: str
    action: str = "read"
    tool_name: str | None = "web_search"


@attrs.frozen(kw_only=True)
class _Outcome:
    """Shaped like the Enforce handler's outcome (what observers receive)."""

    request_id: str
    intent: _Intent
    tenant_id: str = "tenant-a"
    agent_id: str = "agent-a"
    layer: str | None = None
    drift_score: float = 0.5
    encode_us: int = 700
    rule_query_us: int = 30
    evaluation_us: int = 400
    total_us: int = 1_250
    error: str = ""
    result: Result


def test_an_enforce_outcome_becomes_a_session_keyed_by_the_request_id() -> None:
    recorded: list[EnforcementSession] = []

    class Sink:
        def record(self, session: EnforcementSession) -> bool:
            recorded.append(session)
            return True

    result = Result(decision="STEP_UP", evidence=[Evidence("r-step", decision=1)])
    outcome = _Outcome(request_id="req-42", intent=_Intent(raw='{"id": "i"}'), result=result)
    EnforceRecorder(Sink())(outcome)
    (session,) = recorded
    assert session.session_id == "req-42"
    assert session.decision_name == "STEP_UP" and session.final_decision == 0
    assert session.deciding_rule_id == "r-step"
    assert session.layer == "" and session.summary() == "web_search"
    assert session.durations == Durations(
        encode_us=700, rule_query_us=30, evaluation_us=400, total_us=1_250
    )
    assert session.error is None and session.intent_json == '{"id": "i"}'
    fixed = session_from_outcome(
        _Outcome(
            request_id="req-43",
            intent=_Intent(raw="{}", tool_name=None),
            error="no rules in scope",
            total_us=5_000,
            result=Result(decision="DENY"),
        ),
        now_ms=1_000_000,
    )
    assert fixed.timestamp_ms == 1_000_000 - 5  # arrival: the end minus the duration
    assert fixed.summary() == "read" and fixed.error == "no rules in scope"


def test_the_engines_result_type_is_recorded_as_it_decided() -> None:
    from guardrefresh.enforce import Decision, EnforcementResult, RuleEvidence

    evidence = (
        RuleEvidence("r1", "one", 1, (0.9, 0.8, 0.7, 0.6), "action", "3", (0.5,) * 4, "min"),
        RuleEvidence("r2", "two", 0, (0.1, 0.2, 0.3, 0.4), "risk", "", (0.5,) * 4, "weighted-avg"),
    )
    result = EnforcementResult(
        Decision.MODIFY,
        (0.9, 0.8, 0.7, 0.6),
        evidence,
        modified_params='{"x": 1}',
        deciding_rule="r1",
    )
    session = EnforcementSession.from_outcome(session_id="e", intent_json="{}", result=result)
    assert session.decision_name == "MODIFY" and session.final_decision == 1
    assert session.deciding_rule_id == "r1"  # the engine's word, not the last matching rule
    assert [r.anchor_matched for r in session.rules] == ["3", ""]
    assert decision_name_of(Decision.MODIFY) == "MODIFY"
    assert decision_name_of(Decision.DEFER) == "DEFER"
