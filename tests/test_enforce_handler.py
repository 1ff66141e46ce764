"""The Enforce handler in process: a real bridge on a temporary store, no gRPC.

Both entry points (betterproto2 messages for typed callers, bytes for the wire) give the
same answer; every decision reaches the observers once, with its durations. The handler
runs where grpclib runs it, on the asyncio side of a trio-asyncio loop (it crosses to
Trio to build a scope's evaluation set in a worker thread).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import trio_asyncio
from factories import make_rule
from grpclib import GRPCError, Status

from guardrefresh.bridge import Bridge
from guardrefresh.enforce import EnforcementEngine, IntentEncoder
from guardrefresh.metrics import ServiceMetrics
from guardrefresh.model import PolicyType, RuleAnchors
from guardrefresh.proto import rule_installation as pb
from guardrefresh.server import EnforceHandler, EnforceOutcome

TENANT = "tenant-h"


def intent_json(tenant: str = TENANT, layer: str | None = None) -> str:
    document = {
        "id": "evt", "schemaVersion": "v1.3", "tenantId": tenant, "timestamp": 1.0,
        "actor": {"id": "agent-h", "type": "agent"}, "action": "a", "resource": {"type": "r"},
        "data": {"sensitivity": []}, "risk": {"authn": "none"}, "layer": layer,
    }  # fmt: skip
    return json.dumps(document)


T = TypeVar("T")


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    bridge = await Bridge.open(tmp_path / "warm.bin", make_dirs=True)
    try:
        async with trio_asyncio.open_loop():
            yield bridge
    finally:
        bridge.close()


async def on_asyncio(handler: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run one handler call as grpclib does: an asyncio coroutine on the shared loop."""
    result: T = await trio_asyncio.aio_as_trio(handler)(*args)
    return result


async def install_allow_rule(bridge: Bridge) -> list[float]:
    rows = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    rule = make_rule(
        "h-allow", agent_id=TENANT, layer="", policy_type=PolicyType.CONTEXT_ALLOW,
        drift_threshold=0.5, modification_spec="", params={"rule_decision": "min"},
        anchors=RuleAnchors.from_slots([[r.tolist()] for r in rows], (1, 1, 1, 1)),
        installed_by=TENANT,
    )  # fmt: skip
    await bridge.install_rules(TENANT, [rule])
    return [float(v) for v in rows.ravel()]


async def test_both_entry_points_agree_and_observers_see_each_decision(bridge: Bridge) -> None:
    vector = await install_allow_rule(bridge)
    seen: list[EnforceOutcome] = []
    handler = EnforceHandler(
        EnforcementEngine(bridge), IntentEncoder(None, None), observers=[seen.append]
    )
    for drift, name in ((0.1, "ALLOW"), (0.9, "STEP_UP")):
        request = pb.EnforceRequest(
            intent_event_json=intent_json(), intent_vector=vector, request_id=f"r-{drift}",
            drift_score=drift, session_id="s-1",
        )  # fmt: skip
        typed = await on_asyncio(handler.enforce, request)
        wire = pb.EnforceResponse.parse(await on_asyncio(handler.enforce_bytes, bytes(request)))
        assert typed == wire
        assert (typed.decision_name, typed.request_id, typed.rules_evaluated) == (
            name,
            f"r-{drift}",
            1,
        )
        assert typed.drift_triggered is (name == "STEP_UP")
    assert [o.decision_name for o in seen] == ["ALLOW", "ALLOW", "STEP_UP", "STEP_UP"]
    outcome = seen[0]
    assert (outcome.tenant_id, outcome.agent_id, outcome.layer) == (TENANT, "agent-h", None)
    assert (outcome.session_id, outcome.encoded, outcome.encode_us) == ("s-1", False, 0)
    assert outcome.encode_failure is None and outcome.error == ""
    # The parts are timed within the whole.
    assert (
        outcome.evaluation_us > 0
        and outcome.rule_query_us + outcome.evaluation_us <= outcome.total_us
    )


async def test_no_request_id_gets_a_uuid_and_no_vector_no_encoder_is_fail_closed(
    bridge: Bridge,
) -> None:
    await install_allow_rule(bridge)
    seen: list[EnforceOutcome] = []
    handler = EnforceHandler(
        EnforcementEngine(bridge), IntentEncoder(None, None), observers=[seen.append]
    )
    response = await on_asyncio(handler.enforce, pb.EnforceRequest(intent_event_json=intent_json()))
    assert len(response.request_id) == 36 and response.request_id.count("-") == 4
    assert (response.decision_name, response.rules_evaluated) == ("DENY", 0)
    [outcome] = seen
    assert (outcome.encoded, outcome.encode_failure) == (True, "not_configured")
    assert "--management-plane-url" in outcome.error


async def test_a_broken_observer_does_not_fail_the_request(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    vector = await install_allow_rule(bridge)

    def broken(outcome: EnforceOutcome) -> None:
        raise RuntimeError("observer bug")

    handler = EnforceHandler(
        EnforcementEngine(bridge), IntentEncoder(None, None), observers=[broken]
    )
    request = pb.EnforceRequest(intent_event_json=intent_json(), intent_vector=vector)
    assert (await on_asyncio(handler.enforce, request)).decision_name == "ALLOW"
    assert "Enforce observer" in caplog.text and "observer bug" in caplog.text


async def test_malformed_bytes_are_invalid_argument(bridge: Bridge) -> None:
    handler = EnforceHandler(EnforcementEngine(bridge), IntentEncoder(None, None))
    with pytest.raises(GRPCError) as info:
        await on_asyncio(handler.enforce_bytes, b"\x0a\xff\xff\xff")
    assert info.value.status is Status.INVALID_ARGUMENT
    assert "malformed EnforceRequest" in str(info.value.message)


# --------------------------------------------------------- refused requests ---


def handler_with_metrics(bridge: Bridge) -> tuple[EnforceHandler, list[EnforceOutcome], Any]:
    seen: list[EnforceOutcome] = []
    metrics = ServiceMetrics()
    handler = EnforceHandler(
        EnforcementEngine(bridge),
        IntentEncoder(None, None),
        observers=[seen.append, metrics.enforce.observe],
    )
    return handler, seen, metrics


async def refused(handler: EnforceHandler, request: pb.EnforceRequest) -> str:
    with pytest.raises(GRPCError) as info:
        await on_asyncio(handler.enforce_bytes, bytes(request))
    assert info.value.status is Status.INVALID_ARGUMENT
    return str(info.value.message)


async def test_refused_requests_are_reported_as_refused_denials_not_decisions(
    bridge: Bridge,
) -> None:
    vector = await install_allow_rule(bridge)
    handler, seen, metrics = handler_with_metrics(bridge)
    good = intent_json(layer="L1")
    message = await refused(
        handler,
        pb.EnforceRequest(intent_event_json=good, intent_vector=vector[:5], request_id="bad-1"),
    )
    assert "intent_vector has 5 values" in message
    nan_vector = [*vector[:-1], math.nan]
    await refused(handler, pb.EnforceRequest(intent_event_json=good, intent_vector=nan_vector))
    await refused(
        handler,
        pb.EnforceRequest(intent_event_json=good, intent_vector=vector, drift_score=math.inf),
    )
    assert [o.refused for o in seen] == [True, True, True]
    first, second, third = seen
    assert (first.request_id, first.tenant_id, first.agent_id, first.layer) == (
        "bad-1", TENANT, "agent-h", "L1",
    )  # fmt: skip
    assert first.error == message and first.decision_name == "DENY"
    assert first.result.evidence == () and first.rules_evaluated == 0
    assert first.intent.raw == good and first.total_us >= 0
    assert uuid.UUID(second.request_id) and second.request_id != third.request_id
    assert "intent_vector[127] is nan" in second.error
    assert math.isinf(third.drift_score) and "drift_score is inf" in third.error
    # Decisions only in the Enforce metrics.
    get = metrics.registry.get_sample_value
    assert get("guardrefresh_enforce_total", {"decision": "DENY"}) == 0
    assert get("guardrefresh_enforce_duration_seconds_count") == 0
    await on_asyncio(
        handler.enforce_bytes,
        bytes(pb.EnforceRequest(intent_event_json=good, intent_vector=vector)),
    )
    assert get("guardrefresh_enforce_total", {"decision": "ALLOW"}) == 1
    assert [o.refused for o in seen] == [True, True, True, False]


@pytest.mark.parametrize(
    ("text", "expected", "problem"),
    [
        ("{not json", ("", "", None), "not valid JSON"),
        ("[1, 2]", ("", "", None), "must be a JSON object"),
        ("", ("", "", None), "is empty"),
        # Valid JSON that is not a whole IntentEvent: what it names is kept.
        (
            json.dumps({"tenantId": "t-9", "actor": {"id": "who"}, "layer": "L2"}),
            ("t-9", "who", "L2"),
            "missing field 'id'",
        ),
        (
            json.dumps(
                {"tenantId": 5, "rate_limit_context": {"agent_id": "rl"}, "actor": {"id": "a"}}
            ),
            ("", "rl", None),
            "missing field 'id'",
        ),
    ],
)
async def test_a_bad_intent_is_reported_with_what_could_be_read_of_it(
    bridge: Bridge, text: str, expected: tuple[str, str, str | None], problem: str
) -> None:
    handler, seen, _ = handler_with_metrics(bridge)
    message = await refused(handler, pb.EnforceRequest(intent_event_json=text, request_id="r-x"))
    assert problem in message
    [outcome] = seen
    assert outcome.refused and outcome.request_id == "r-x" and outcome.error == message
    assert (outcome.tenant_id, outcome.agent_id, outcome.layer) == expected
    assert outcome.intent.raw == text


async def test_a_large_bad_intent_parsed_in_a_thread_keeps_what_could_be_read(
    bridge: Bridge,
) -> None:
    handler, seen, _ = handler_with_metrics(bridge)
    text = json.dumps({"tenantId": "t-big", "padding": "x" * 70_000})
    # Parsed in a worker thread (over 64 KiB), started from the asyncio side.
    with pytest.raises(GRPCError) as info:
        await on_asyncio(handler.enforce_bytes, bytes(pb.EnforceRequest(intent_event_json=text)))
    assert info.value.status is Status.INVALID_ARGUMENT
    [outcome] = seen
    assert outcome.refused and outcome.tenant_id == "t-big" and outcome.intent.raw == text


async def test_undecodable_bytes_are_reported_as_a_refusal(bridge: Bridge) -> None:
    handler, seen, _ = handler_with_metrics(bridge)
    with pytest.raises(GRPCError):
        await on_asyncio(handler.enforce_bytes, b"\x0a\xff\xff\xff")
    [outcome] = seen
    assert outcome.refused and "malformed EnforceRequest" in outcome.error
    assert uuid.UUID(outcome.request_id)
    assert (outcome.tenant_id, outcome.agent_id, outcome.intent.raw) == ("", "", "")
