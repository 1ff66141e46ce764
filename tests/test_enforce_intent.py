"""``intent_event_json`` parsing: the IntentEvent v1.3 fields of the original, clear errors."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardrefresh.enforce._intent import MAX_DEPTH, IntentError, parse_intent

#: The example of the original's own round-trip test (api_types.rs), every field set.
FULL: dict[str, Any] = {
    "id": "evt-123",
    "schemaVersion": "v1.3",
    "tenantId": "tenant-1",
    "timestamp": 1699564800.0,
    "actor": {"id": "agent-1", "type": "agent"},
    "action": "read",
    "resource": {"type": "database", "name": "users_db", "location": "cloud"},
    "data": {"sensitivity": ["internal"], "pii": False, "volume": "single"},
    "risk": {"authn": "required"},
    "layer": "L4",
    "tool_name": "web_search",
    "tool_method": "query",
    "tool_params": {"query": "example"},
    "rate_limit_context": {"agent_id": "agent-7", "window_start": 1699564800.0, "call_count": 3},
}

#: What the management plane's DataPlaneClient sends (dataplane_client.py): no layer, no
#: rate limit context, resource and data reduced to their required keys, nulls allowed.
MANAGEMENT_PLANE: dict[str, Any] = {
    "id": "call-1",
    "schemaVersion": "v1.3",
    "tenantId": "tenant-9",
    "timestamp": 1700000000.5,
    "actor": {"id": "agent-9", "type": "agent"},
    "action": "send the report",
    "resource": {"type": "email tool"},
    "data": {"sensitivity": []},
    "risk": {"authn": "none"},
    "context": None,
    "tool_params": None,
}


def text(document: Any) -> str:
    return json.dumps(document)


def without(path: str) -> dict[str, Any]:
    document = copy.deepcopy(FULL)
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    del target[last]
    return document


def with_value(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(FULL)
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    target[last] = value
    return document


def test_every_field_of_the_original_example() -> None:
    raw = text(FULL)
    intent = parse_intent(raw)
    assert intent.raw == raw
    assert (intent.id, intent.schema_version, intent.tenant_id) == ("evt-123", "v1.3", "tenant-1")
    assert intent.timestamp == 1699564800.0
    assert (intent.actor_id, intent.actor_type, intent.action) == ("agent-1", "agent", "read")
    assert (intent.resource_type, intent.resource_name, intent.resource_location) == (
        "database",
        "users_db",
        "cloud",
    )
    assert (intent.data_sensitivity, intent.data_pii, intent.data_volume) == (
        ("internal",),
        False,
        "single",
    )
    assert intent.risk_authn == "required"
    assert (intent.layer, intent.tool_name, intent.tool_method) == ("L4", "web_search", "query")
    assert (
        intent.rate_limit_agent_id,
        intent.rate_limit_window_start,
        intent.rate_limit_call_count,
    ) == ("agent-7", 1699564800.0, 3)
    # The rate limit context names the agent, as the original recorded it.
    assert intent.agent_id == "agent-7"


def test_what_the_management_plane_sends() -> None:
    intent = parse_intent(text(MANAGEMENT_PLANE))
    assert intent.tenant_id == "tenant-9"
    assert intent.layer is None
    assert (intent.resource_name, intent.data_pii, intent.rate_limit_agent_id) == (None, None, None)
    assert intent.data_sensitivity == ()
    # Without a rate limit context the actor is the agent.
    assert intent.agent_id == "agent-9"


@pytest.mark.parametrize("layer", ["", None])
def test_empty_or_null_layer_means_every_layer(layer: str | None) -> None:
    assert parse_intent(text(with_value("layer", layer))).layer is None


def test_integer_timestamp_and_unknown_keys_are_accepted() -> None:
    document = with_value("timestamp", 1700000000)
    document["something_new"] = {"nested": [1, 2, 3]}
    intent = parse_intent(text(document))
    assert intent.timestamp == 1700000000.0


@pytest.mark.parametrize(
    "field",
    [
        "id",
        "schemaVersion",
        "tenantId",
        "timestamp",
        "actor",
        "actor.id",
        "actor.type",
        "action",
        "resource",
        "resource.type",
        "data",
        "data.sensitivity",
        "risk",
        "risk.authn",
        "rate_limit_context.agent_id",
        "rate_limit_context.window_start",
        "rate_limit_context.call_count",
    ],
)
def test_missing_required_field_is_named(field: str) -> None:
    with pytest.raises(IntentError, match=f"missing field '{field}'"):
        parse_intent(text(without(field)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tenantId", None, "field 'tenantId' must not be null"),
        ("tenantId", 7, "field 'tenantId' must be a string, got a number"),
        ("timestamp", "now", "field 'timestamp' must be a number, got a string"),
        ("timestamp", True, "field 'timestamp' must be a number, got a boolean"),
        ("actor", "agent-1", "field 'actor' must be an object, got a string"),
        ("actor.id", None, "field 'actor.id' must not be null"),
        ("data.sensitivity", "internal", "field 'data.sensitivity' must be an array of strings"),
        ("data.sensitivity", ["a", 1], r"field data.sensitivity\[1\] must be a string"),
        ("data.pii", "no", "field 'data.pii' must be a boolean, got a string"),
        ("layer", 4, "field 'layer' must be a string, got a number"),
        ("resource.name", [], "field 'resource.name' must be a string, got an array"),
        ("rate_limit_context", [], "field 'rate_limit_context' must be an object"),
        ("rate_limit_context.call_count", 3.5, "must be an integer, got a number"),
        ("rate_limit_context.call_count", 2**31, "out of range"),
    ],
)
def test_wrong_types_are_named(field: str, value: Any, message: str) -> None:
    with pytest.raises(IntentError, match=message):
        parse_intent(text(with_value(field, value)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "intent_event_json is empty"),
        ("   ", "intent_event_json is empty"),
        ("{", "not valid JSON"),
        ('{"id": "x",}', "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got an array"),
        ('"text"', "must be a JSON object, got a string"),
        ("null", "must be a JSON object, got null"),
        ('{"timestamp": Infinity}', "Infinity is not a JSON number"),
    ],
)
def test_bad_json_is_refused_with_the_problem(raw: str, message: str) -> None:
    with pytest.raises(IntentError, match=message):
        parse_intent(raw)


def test_nan_timestamp_is_refused() -> None:
    raw = text(FULL).replace("1699564800.0,", "NaN,", 1)
    with pytest.raises(IntentError, match="NaN is not a JSON number"):
        parse_intent(raw)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_depth_limit() -> None:
    # The document itself is one level; context adds its own.
    ok = with_value("context", nested(MAX_DEPTH - 1))
    assert parse_intent(text(ok)).tenant_id == "tenant-1"
    too_deep = with_value("tool_params", nested(MAX_DEPTH))
    with pytest.raises(IntentError, match=f"nests deeper than {MAX_DEPTH} levels"):
        parse_intent(text(too_deep))


def test_pathological_nesting_fails_fast_with_the_same_message() -> None:
    raw = "[" * 200_000 + "]" * 200_000
    with pytest.raises(IntentError, match="nests deeper than"):
        parse_intent(raw)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_intent_error(raw: str) -> None:
    try:
        parse_intent(raw)
    except IntentError as exc:
        assert str(exc).startswith("intent_event_json")


def test_problems_are_reported_in_the_schema_order() -> None:
    with pytest.raises(IntentError, match="missing field 'schemaVersion'"):
        parse_intent('{"id": "x"}')
    with pytest.raises(IntentError, match="missing field 'id'"):
        parse_intent("{}")
