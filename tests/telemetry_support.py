"""Builders of enforcement sessions and engine-like results for the telemetry tests."""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs

from guardrefresh.replication import EngineSettings
from guardrefresh.telemetry import Durations, EnforcementSession


@attrs.frozen
class Evidence:
    """Shaped like the engine's per-rule evidence (``EvidenceLike``)."""

    rule_id: str
    rule_name: str = ""
    decision: int = 0
    similarities: Sequence[float] = (0.1, 0.2, 0.3, 0.4)
    triggering_slice: str = "action"
    anchor_matched: object = ""
    thresholds: Sequence[float] = (0.5, 0.5, 0.5, 0.5)
    scoring_mode: str = "min"


@attrs.frozen
class Result:
    """Shaped like the engine's ``EnforcementResult`` (``EnforcementResultLike``)."""

    decision: object
    evidence: Sequence[Evidence] = ()
    slice_similarities: Sequence[float] = (0.0, 0.0, 0.0, 0.0)
    modified_params: object = None
    drift_triggered: bool = False


def make_session(
    session_id: str,
    *,
    timestamp_ms: int | None = None,
    tenant: str = "tenant-a",
    agent: str = "agent-a",
    layer: str = "L4",
    decision: str = "ALLOW",
    rules: int = 2,
    tool: str = "web_search",
    total_us: int = 1500,
    intent_extra: str = "",
) -> EnforcementSession:
    """A session like one Enforce call would produce (now, unless told); the last rule decides."""
    evidence = [
        Evidence(rule_id=f"{session_id}-r{i}", rule_name=f"rule {i}", decision=0)
        for i in range(rules - 1)
    ]
    if rules:
        evidence.append(
            Evidence(rule_id=f"deciding-{decision.lower()}", rule_name="decider", decision=1)
        )
    intent = {"id": session_id, "tool_name": tool, "tenant_id": tenant}
    if intent_extra:
        intent["note"] = intent_extra
    return EnforcementSession.from_outcome(
        session_id=session_id,
        intent_json=json.dumps(intent),
        tenant_id=tenant,
        agent_id=agent,
        layer=layer,
        drift_score=0.25,
        result=Result(
            decision=decision, evidence=evidence, slice_similarities=(0.9, 0.8, 0.7, 0.6)
        ),
        durations=Durations(encode_us=100, rule_query_us=20, evaluation_us=300, total_us=total_us),
        timestamp_ms=timestamp_ms,
    )


def engine_settings(dsn: str) -> EngineSettings:
    """The fleet engine's settings for a test database: a small pool, quick timeouts."""
    return EngineSettings(dsn=dsn, pool_size=3, connect_timeout_s=2.0, command_timeout_s=10.0)
