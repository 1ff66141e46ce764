"""The compiled wire codec gives betterproto2's bytes and betterproto2's parse, for every message.

Messages are drawn at random from the descriptors of every message type of the
API (maps, oneofs, ``optional`` fields, nested and repeated messages, float32
edge values such as -0.0 and subnormals, negative ints, Unicode).
"""

from __future__ import annotations

import struct
from typing import Any

import betterproto2
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from grpclib import GRPCError, Status
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrefresh.proto import rule_installation as pb
from guardrefresh.server import CompiledProtoCodec, decode_message, encode_message, upb_class
from guardrefresh.server._codec_plan import compiled_plan

_F = FieldDescriptor
MESSAGES: dict[str, type[Any]] = {
    value.DESCRIPTOR.full_name: value
    for value in vars(pb).values()
    if isinstance(value, type)
    and issubclass(value, betterproto2.Message)
    and value is not betterproto2.Message
}

_text = st.text(st.characters(codec="utf-8"), max_size=12)
_INTS = {
    _F.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    _F.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    _F.TYPE_UINT32: st.integers(0, 2**32 - 1),
    _F.TYPE_UINT64: st.integers(0, 2**64 - 1),
}
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    **_INTS,
    _F.TYPE_STRING: _text,
    _F.TYPE_BYTES: st.binary(max_size=12),
    _F.TYPE_BOOL: st.booleans(),
    # float32 values (what the field holds), -0.0 and subnormals included; no NaN (NaN != NaN).
    _F.TYPE_FLOAT: st.floats(width=32, allow_nan=False),
    _F.TYPE_DOUBLE: st.floats(allow_nan=False),
}


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == _F.TYPE_MESSAGE:
        return messages(MESSAGES[field.message_type.full_name], depth + 1)
    return _SCALARS[field.type]


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@st.composite
def _fields(draw: st.DrawFn, cls: type[Any], depth: int) -> Any:
    descriptor: Descriptor = cls.DESCRIPTOR
    values: dict[str, Any] = {}
    deep = depth >= 3
    for oneof in descriptor.oneofs:
        members = [f for f in oneof.fields if not (len(oneof.fields) == 1 and f.has_presence)]
        if members and not deep:
            chosen = draw(st.sampled_from([None, *members]))
            if chosen is not None:
                values[chosen.name] = draw(_value(chosen, depth))
    for field in descriptor.fields:
        if field.containing_oneof is not None and field.name in values:
            continue
        if field.containing_oneof is not None and len(field.containing_oneof.fields) > 1:
            continue  # a real oneof, drawn above
        if _is_map(field):
            key, value = (
                field.message_type.fields_by_number[1],
                field.message_type.fields_by_number[2],
            )
            if not deep:
                values[field.name] = draw(
                    st.dictionaries(_SCALARS[key.type], _value(value, depth), max_size=4)
                )
        elif field.is_repeated:
            if not deep or field.type != _F.TYPE_MESSAGE:
                values[field.name] = draw(st.lists(_value(field, depth), max_size=4))
        elif field.type == _F.TYPE_MESSAGE:
            if not deep:
                values[field.name] = draw(st.none() | _value(field, depth))
        elif field.has_presence:  # proto3 optional
            values[field.name] = draw(st.none() | _value(field, depth))
        else:
            values[field.name] = draw(_value(field, depth))
    return cls(**values)


def messages(cls: type[Any], depth: int = 0) -> st.SearchStrategy[Any]:
    return _fields(cls, depth)


any_message = st.sampled_from(sorted(MESSAGES)).flatmap(lambda name: messages(MESSAGES[name]))


def test_every_message_type_iscompiled_plan() -> None:
    assert len(MESSAGES) >= 26
    for cls in MESSAGES.values():
        assert compiled_plan(cls) is not None, cls.__name__


@settings(max_examples=600, deadline=None)
@given(any_message)
def test_compiled_bytes_equal_betterproto2_bytes(message: Any) -> None:
    assert encode_message(message) == bytes(message)


@settings(max_examples=600, deadline=None)
@given(any_message)
def test_compiled_parse_equals_betterproto2_parse(message: Any) -> None:
    data = bytes(message)
    cls = type(message)
    parsed = decode_message(data, cls)
    assert type(parsed) is cls
    assert parsed == cls.parse(data)
    # And what was parsed encodes back to what betterproto2 makes of it.
    assert encode_message(parsed) == bytes(parsed)


@pytest.mark.parametrize(
    "message",
    [
        pb.RuleInstance(params={"b": pb.ParamValue(bool_value=False), "a": pb.ParamValue()}),
        pb.InstallRulesResponse(rules_by_layer={"z": 1, "a": 0, "": 2, "global": 3}),
        pb.GetRuleResponse(rule=pb.RuleInstance(), found=True),
        pb.InstallRulesRequest(rules=[pb.RuleInstance(params={"k": pb.ParamValue()})] * 3),
        pb.RuleInstance(drift_threshold=-0.0, slice_weights=[-0.0, 1e-45, 0.0, -3.4e38]),
        pb.QueryTelemetryRequest(decision=0, agent_id="", limit=0),
        pb.EnforceRequest(intent_vector=[float("nan"), float("inf")], drift_score=float("nan")),
    ],
    ids=[
        "map-order-defaults",
        "int-map",
        "empty-nested",
        "nested-maps",
        "zeros",
        "presence",
        "nan",
    ],
)
def test_edge_cases_byte_for_byte(message: Any) -> None:
    assert encode_message(message) == bytes(message)


def test_unknown_fields_are_written_back() -> None:
    # Field 99 (varint 7) and field 100 (a string) are not in GetRuleRequest.
    extra = b"\x98\x06\x07" + b"\xa2\x06\x02hi"
    parsed = pb.GetRuleRequest.parse(bytes(pb.GetRuleRequest(rule_id="r1")) + extra)
    nested = pb.GetRuleResponse(rule=pb.RuleInstance.parse(b"\n\x01x" + extra), tier="hot")
    for message in (parsed, nested):
        assert encode_message(message) == bytes(message)


def test_float_fields_hold_float32_after_parsing() -> None:
    data = bytes(pb.EnforceRequest(intent_vector=[0.1, 1 / 3], drift_score=0.2))
    parsed = decode_message(data, pb.EnforceRequest)
    assert parsed.intent_vector == [
        struct.unpack("<f", struct.pack("<f", v))[0] for v in (0.1, 1 / 3)
    ]
    assert parsed == pb.EnforceRequest.parse(data)


def test_malformed_bytes_raise_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_message(b"\x0a\x05ab", pb.GetRuleRequest)  # length runs past the end


def test_the_codec_refuses_malformed_requests_as_invalid_argument() -> None:
    codec = CompiledProtoCodec()
    with pytest.raises(GRPCError) as info:
        codec.decode(b"\xff\xff\xff", pb.EnforceRequest)
    assert info.value.status is Status.INVALID_ARGUMENT
    assert "malformed EnforceRequest" in str(info.value.message)


def test_the_codec_sends_betterproto2_and_upb_messages_alike() -> None:
    codec = CompiledProtoCodec()
    message = pb.RuleEvidence(rule_id="r", similarities=[0.5, 0.25], anchor_matched="3")
    built = upb_class(pb.RuleEvidence)(rule_id="r", similarities=[0.5, 0.25], anchor_matched="3")
    assert codec.encode(message, pb.RuleEvidence) == bytes(message)
    assert codec.encode(built, pb.RuleEvidence) == bytes(message)
    assert codec.decode(bytes(message), pb.RuleEvidence) == message
    with pytest.raises(TypeError):
        codec.encode(message, pb.GetRuleRequest)
