"""Wire codec benchmarks (issue 15): betterproto2's pure-Python codec against the compiled one.

Each entry times one message's encoding (``bytes(message)`` for betterproto2,
:func:`guardrefresh.server.encode_message` for the compiled codec, which the server
uses) or parsing, in microseconds per message, in-process:

- ``EnforceResponse_encode_<how>``: an EnforceResponse with ``evidence``
  RuleEvidence entries (1,000 in a full run) as an Enforce handler returns it.
  Besides ``betterproto2`` and ``compiled``, two other ways to reach the C
  runtime: ``via_dict`` (betterproto2 ``to_dict`` then protobuf ``ParseDict``)
  and ``upb_direct`` (the handler builds the ``google.protobuf`` message itself,
  no betterproto2 object at all: the floor of any conversion).
- ``EnforceResponse_parse_<how>``: parsing that answer (what a Python client does).
- ``GetRuleResponse_encode_<how>``: a GetRule answer, 4 x 16 anchors (2,048 floats).
- ``EnforceRequest_parse_<how>``: an Enforce request with its 128-float vector.
- ``InstallRulesRequest_parse_<how>``: an InstallRules request of 20 rules with
  4 x 16 anchors each.
- ``<message>_<op>_speedup``: betterproto2 time / compiled time, per sample pair.

The compiled codec's bytes are checked equal to betterproto2's before timing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf import json_format

from guardrefresh.model import PolicyType, Rule, RuleAnchors, rule_to_proto
from guardrefresh.proto import rule_installation as pb
from guardrefresh.server import decode_message, encode_message, upb_class

from ._data import Plan, Workspace, entry

__all__ = ["run_codec"]

logger = logging.getLogger(__name__)

#: A timed sample lasts at least this long (small messages are timed in loops).
_MIN_SAMPLE_S = 0.005


def _evidence(i: int) -> pb.RuleEvidence:
    return pb.RuleEvidence(
        rule_id=f"tenant-1-rule-{i:05d}",
        rule_name=f"Block risky action {i}",
        decision=0,
        similarities=[0.1 + i % 7 / 100, 0.2, 0.3, 0.4],
        triggering_slice="action",
        anchor_matched=str(i % 16),
        thresholds=[0.75, 0.75, 0.75, 0.75],
        scoring_mode="min",
    )


def enforce_response(evidence: int) -> pb.EnforceResponse:
    return pb.EnforceResponse(
        decision=0,
        slice_similarities=[0.41, 0.32, 0.23, 0.14],
        rules_evaluated=evidence,
        evidence=[_evidence(i) for i in range(evidence)],
        request_id="5d0a4e8e-2f7e-4bd3-9d38-6b0c5f2a7f11",
        decision_name="DENY",
    )


def _upb_enforce_response(evidence: int) -> Any:
    """The same answer built directly as a ``google.protobuf`` message."""
    message = upb_class(pb.EnforceResponse)(
        decision=0,
        slice_similarities=[0.41, 0.32, 0.23, 0.14],
        rules_evaluated=evidence,
        request_id="5d0a4e8e-2f7e-4bd3-9d38-6b0c5f2a7f11",
        decision_name="DENY",
    )
    for i in range(evidence):
        message.evidence.add(
            rule_id=f"tenant-1-rule-{i:05d}",
            rule_name=f"Block risky action {i}",
            decision=0,
            similarities=[0.1 + i % 7 / 100, 0.2, 0.3, 0.4],
            triggering_slice="action",
            anchor_matched=str(i % 16),
            thresholds=[0.75, 0.75, 0.75, 0.75],
            scoring_mode="min",
        )
    return message


def _full_rule(i: int) -> Rule:
    rng = np.random.default_rng(i)
    slots = rng.standard_normal((4, 16, 32)).astype(np.float32).tolist()
    return Rule(
        rule_id=f"rule-{i}",
        family_id="fam",
        layer="L1",
        agent_id="tenant-1",
        priority=10,
        enabled=True,
        created_at_ms=1_700_000_000_000,
        params={"rule_type": "design_boundary", "rule_decision": "min", "notes": "n"},
        # Padded as the management plane sends it: 16 vectors per slot.
        anchors=RuleAnchors.from_slots(slots, (3, 2, 1, 4)),
        policy_type=PolicyType.CONTEXT_DENY,
        drift_threshold=0.0,
        modification_spec="",
        slice_weights=(0.25, 0.25, 0.25, 0.25),
    )


def _per_call_us(call: Callable[[], object], repeats: int) -> list[float]:
    call()
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    loops = max(1, int(_MIN_SAMPLE_S / max(once, 1e-7)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        samples.append((time.perf_counter() - start) / loops * 1e6)
    return samples


def _pair(
    out: dict[str, Any],
    name: str,
    parameters: dict[str, Any],
    ways: dict[str, Callable[[], object]],
    repeats: int,
) -> None:
    samples = {how: _per_call_us(call, repeats) for how, call in ways.items()}
    for how, values in samples.items():
        out[f"{name}_{how}"] = entry(parameters=parameters, unit="us", samples=values)
    speedups = [
        slow / fast for slow, fast in zip(samples["betterproto2"], samples["compiled"], strict=True)
    ]
    out[f"{name}_speedup"] = entry(parameters=parameters, unit="x", samples=speedups)
    logger.info(
        "%s: betterproto2 %.0f us, compiled %.0f us",
        name,
        out[f"{name}_betterproto2"]["median"],
        out[f"{name}_compiled"]["median"],
    )


def _check_same(message: Any) -> bytes:
    data = bytes(message)
    if encode_message(message) != data:
        raise AssertionError(f"compiled bytes of {type(message).__name__} differ")
    if decode_message(data, type(message)) != type(message).parse(data):
        raise AssertionError(f"compiled parse of {type(message).__name__} differs")
    return data


def run_codec(ws: Workspace, plan: Plan) -> dict[str, Any]:
    del ws  # in-process, no store
    repeats = plan.codec_repeats
    count = 50 if plan.tiny else 1000
    out: dict[str, Any] = {}

    response = enforce_response(count)
    response_bytes = _check_same(response)
    upb_response = upb_class(pb.EnforceResponse)
    _pair(
        out,
        "EnforceResponse_encode",
        {"evidence": count, "bytes": len(response_bytes)},
        {
            "betterproto2": lambda: bytes(response),
            "compiled": lambda: encode_message(response),
            "via_dict": lambda: json_format.ParseDict(
                response.to_dict(), upb_response()
            ).SerializeToString(),
            "upb_direct": lambda: _upb_enforce_response(count).SerializeToString(),
        },
        repeats,
    )
    _pair(
        out,
        "EnforceResponse_parse",
        {"evidence": count, "bytes": len(response_bytes)},
        {
            "betterproto2": lambda: pb.EnforceResponse.parse(response_bytes),
            "compiled": lambda: decode_message(response_bytes, pb.EnforceResponse),
        },
        repeats,
    )

    answer = pb.GetRuleResponse(found=True, rule=rule_to_proto(_full_rule(0)), tier="hot")
    answer_bytes = _check_same(answer)
    _pair(
        out,
        "GetRuleResponse_encode",
        {"anchor_floats": 4 * 16 * 32, "bytes": len(answer_bytes)},
        {"betterproto2": lambda: bytes(answer), "compiled": lambda: encode_message(answer)},
        repeats,
    )

    request = pb.EnforceRequest(
        intent_event_json='{"tenantId": "tenant-1", "action": "read", "layer": "L4"}',
        intent_vector=np.random.default_rng(1).standard_normal(128).astype(np.float32).tolist(),
        request_id="r-1",
        drift_score=0.125,
        session_id="s-1",
    )
    request_bytes = _check_same(request)
    _pair(
        out,
        "EnforceRequest_parse",
        {"intent_vector": 128, "bytes": len(request_bytes)},
        {
            "betterproto2": lambda: pb.EnforceRequest.parse(request_bytes),
            "compiled": lambda: decode_message(request_bytes, pb.EnforceRequest),
        },
        repeats,
    )

    install = pb.InstallRulesRequest(
        agent_id="tenant-1", rules=[rule_to_proto(_full_rule(i)) for i in range(20)]
    )
    install_bytes = _check_same(install)
    _pair(
        out,
        "InstallRulesRequest_parse",
        {"rules": 20, "bytes": len(install_bytes)},
        {
            "betterproto2": lambda: pb.InstallRulesRequest.parse(install_bytes),
            "compiled": lambda: decode_message(install_bytes, pb.InstallRulesRequest),
        },
        repeats,
    )
    return out
