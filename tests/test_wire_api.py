"""Our wire API contains the original Guard data plane's API, field for field.

``tests/data/original_api.json`` tabulates the original
``data_plane/proto/rule_installation.proto`` (made with ``scripts/api_table.py``):
every message with each field's name, number, type, label and ``optional``
presence, and every RPC with its request and response types. Here the same
facts are read from the descriptors embedded in our generated code and
compared, message by message and RPC by RPC. Our additions must be additive:
they are listed below so that a new one is a deliberate decision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor

from guardrefresh.proto import rule_installation as pb

ORIGINAL = json.loads((Path(__file__).parent / "data" / "original_api.json").read_text())

# Everything we serve beyond the original, as (message or service, member) names.
ADDED_MESSAGES = {
    ".rule_installation.GetRefreshStatusRequest",
    ".rule_installation.GetRefreshStatusResponse",
    ".rule_installation.GetRuleRequest",
    ".rule_installation.GetRuleResponse",
    ".rule_installation.RefreshStatsMessage",
    ".rule_installation.ReplicationStatus",
}
ADDED_FIELDS = {
    ".rule_installation.QueryTelemetryRequest": {"decision_name"},
    ".rule_installation.EnforcementSessionSummary": {"decision_name", "deciding_rule_id"},
    ".rule_installation.RefreshRulesRequest": {"family_ids"},
    ".rule_installation.RefreshRulesResponse": {
        "timestamp_ms",
        "bridge_version",
        "unchanged",
        "rules_added",
        "rules_removed",
        "rules_changed",
        "trigger",
        "family_ids",
    },
}
ADDED_RPCS = {"GetRule", "GetRefreshStatus"}


def _file() -> FileDescriptor:
    file: FileDescriptor = pb.RuleInstance.DESCRIPTOR.file
    return file


def _type_names() -> dict[int, str]:
    return {
        value: name.removeprefix("TYPE_").lower()
        for name, value in descriptor_pb2.FieldDescriptorProto.Type.items()
    }


def _rows(message: Descriptor, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Our fields in the table's shape, from the embedded descriptor."""
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    types = _type_names()
    name = f"{prefix}.{message.name}"
    rows = []
    for field in proto.field:
        row: dict[str, Any] = {
            "name": field.name,
            "number": field.number,
            "type": types[field.type],
            "label": "repeated" if field.label == field.LABEL_REPEATED else "singular",
            "optional": field.proto3_optional,
        }
        if field.type_name:
            row["type_name"] = field.type_name
        if field.HasField("oneof_index") and not field.proto3_optional:
            row["oneof"] = proto.oneof_decl[field.oneof_index].name
        rows.append(row)
    table = {name: rows}
    for nested in message.nested_types:
        table.update(_rows(nested, name))
    return table


def _ours() -> dict[str, list[dict[str, Any]]]:
    file = _file()
    table: dict[str, list[dict[str, Any]]] = {}
    for message in file.message_types_by_name.values():
        table.update(_rows(message, f".{file.package}"))
    return table


OURS = _ours()


def test_same_package_and_syntax() -> None:
    proto = descriptor_pb2.FileDescriptorProto()
    _file().CopyToProto(proto)
    assert (proto.package, proto.syntax or "proto2") == (ORIGINAL["package"], ORIGINAL["syntax"])


def test_every_original_message_exists() -> None:
    assert set(ORIGINAL["messages"]) <= set(OURS)


def test_only_the_listed_messages_are_added() -> None:
    assert set(OURS) - set(ORIGINAL["messages"]) == ADDED_MESSAGES


@pytest.mark.parametrize("message", sorted(ORIGINAL["messages"]))
def test_message_fields_match_the_original(message: str) -> None:
    ours = {row["number"]: row for row in OURS[message]}
    theirs = {row["number"]: row for row in ORIGINAL["messages"][message]}
    for number, row in theirs.items():
        # Same number, name, type, message type, repeated-ness, optional presence, oneof.
        assert ours.get(number) == row, f"{message} field #{number}"
    added = {row["name"] for number, row in ours.items() if number not in theirs}
    assert added == ADDED_FIELDS.get(message, set())


def test_rpcs_match_the_original() -> None:
    file = _file()
    for service_name, methods in ORIGINAL["services"].items():
        service = file.services_by_name[service_name.rsplit(".", 1)[1]]
        ours = {
            m.name: {
                "input": f".{m.input_type.full_name}",
                "output": f".{m.output_type.full_name}",
                "client_streaming": m.client_streaming,
                "server_streaming": m.server_streaming,
            }
            for m in service.methods
        }
        for name, signature in methods.items():
            assert ours.get(name) == signature, name
        assert set(ours) - set(methods) == ADDED_RPCS


def test_the_table_covers_what_the_management_plane_relies_on() -> None:
    # Guards against a truncated or regenerated-from-the-wrong-file data table.
    messages = ORIGINAL["messages"]
    assert len(messages) == 26  # with the two map entry types
    evidence = {row["name"]: row for row in messages[".rule_installation.RuleEvidence"]}
    assert evidence["anchor_matched"]["type"] == "string"
    query = messages[".rule_installation.QueryTelemetryRequest"]
    assert [r["name"] for r in query if r["optional"]] == [
        "agent_id",
        "tenant_id",
        "decision",
        "layer",
        "start_time_ms",
        "end_time_ms",
    ]
    assert len(ORIGINAL["services"][".rule_installation.DataPlane"]) == 8


def test_optional_presence_survives_the_generated_code() -> None:
    # decision=0 is a filter the management plane sends; absent means "all".
    sent = pb.QueryTelemetryRequest(decision=0, limit=50)
    back = pb.QueryTelemetryRequest.parse(bytes(sent))
    assert back.decision == 0 and back.agent_id is None
    assert pb.QueryTelemetryRequest.parse(b"").decision is None
