"""InstallRules decoding in C (upb) gives exactly what betterproto2's parse gives.

``parse_install_request`` builds rules straight from protobuf's C-backed message
(``rule_from_upb``); ``_parse_slowly`` is the betterproto2 path it replaced (and still
takes for bytes its key-order walk does not follow). For the same bytes both must give
equal rules, params in the same order, or the same error, word for word.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import betterproto2
import pytest
from factories import make_anchors, make_rule, rules
from grpclib import GRPCError
from hypothesis import given, settings
from hypothesis import strategies as st
from test_model import WIRE_CASES

from guardrefresh.model import Rule, RuleValidationError, rule_to_proto
from guardrefresh.proto import rule_installation as pb
from guardrefresh.server._install import (
    InstallRequest,
    _parse_slowly,
    param_orders,
    parse_install_request,
)


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _rule_view(rule: Rule) -> tuple[Any, ...]:
    """What equality of Rules leaves out: params order and types, -0.0 in floats."""
    params = [(k, type(v).__name__, repr(v)) for k, v in rule.params.items()]
    return (params, _bits(rule.drift_threshold), [_bits(w) for w in rule.slice_weights])


def _outcome(parse: Callable[[bytes], InstallRequest], data: bytes) -> tuple[Any, ...]:
    try:
        request = parse(data)
    except RuleValidationError as exc:
        return ("invalid", exc.rule_id, exc.field, str(exc))
    except GRPCError as exc:
        return ("refused", exc.status, exc.message)
    return (
        "ok",
        request.agent_id,
        request.config_id,
        request.owner,
        request.rules,
        [_rule_view(r) for r in request.rules],
    )


def _entry(key: str | None, value: pb.ParamValue) -> bytes:
    """A ``params`` map entry (field 8) written by hand: key optional, any order."""
    body = b""
    if key is not None:
        raw = key.encode()
        body += b"\x0a" + betterproto2.encode_varint(len(raw)) + raw
    inner = bytes(value)
    body += b"\x12" + betterproto2.encode_varint(len(inner)) + inner
    return b"\x42" + betterproto2.encode_varint(len(body)) + body


def _request(rule_bytes: list[bytes], agent: str = "agent-x") -> bytes:
    head = bytes(pb.InstallRulesRequest(agent_id=agent, config_id="cfg", owner="o"))
    return head + b"".join(b"\x12" + betterproto2.encode_varint(len(r)) + r for r in rule_bytes)


_param = st.one_of(
    st.builds(pb.ParamValue, int_value=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.ParamValue, string_value=st.text(max_size=5)),
    st.builds(pb.ParamValue, float_value=st.floats()),
    st.builds(pb.ParamValue, bool_value=st.booleans()),
    st.just(pb.ParamValue()),  # unset: refused
)


@st.composite
def wire_rules(draw: st.DrawFn) -> bytes:
    """One rule's bytes: a valid rule, maybe broken as the model tests break them,
    maybe with extra map entries (repeated keys, missing keys) appended."""
    message = rule_to_proto(draw(rules()))
    if draw(st.booleans()):
        _name, change, _field, _problem = draw(st.sampled_from(WIRE_CASES))
        with contextlib.suppress(IndexError):  # a change to an anchor this rule lacks
            change(message)
    data = bytes(message)
    extra = draw(
        st.lists(st.tuples(st.none() | st.sampled_from(["a", "b", "zz", "é"]), _param), max_size=4)
    )
    return data + b"".join(_entry(key, value) for key, value in extra)


@settings(max_examples=150, deadline=None)
@given(rule_bytes=st.lists(wire_rules(), max_size=4), agent=st.sampled_from(["agent-x", ""]))
def test_c_parse_and_betterproto2_parse_agree(rule_bytes: list[bytes], agent: str) -> None:
    data = _request(rule_bytes, agent)
    assert _outcome(parse_install_request, data) == _outcome(_parse_slowly, data)


@pytest.mark.parametrize(
    ("name", "change"), [(c[0], c[1]) for c in WIRE_CASES], ids=[c[0] for c in WIRE_CASES]
)
def test_each_wire_problem_gets_the_same_error_from_both(
    name: str, change: Callable[[pb.RuleInstance], None]
) -> None:
    good = rule_to_proto(make_rule("good"))
    bad = rule_to_proto(make_rule("bad"))
    change(bad)
    data = _request([bytes(good), bytes(bad)])
    fast = _outcome(parse_install_request, data)
    assert fast[0] == "invalid", (name, fast)
    assert fast == _outcome(_parse_slowly, data)


def test_params_keep_their_wire_order_and_a_repeated_key_its_first_place() -> None:
    rule = bytes(rule_to_proto(make_rule("r", params={})))
    entries = [
        ("zeta", pb.ParamValue(int_value=1)),
        ("alpha", pb.ParamValue(string_value="a")),
        ("mid", pb.ParamValue(bool_value=True)),
        ("zeta", pb.ParamValue(int_value=2)),  # last value, first place
    ]
    data = _request([rule + b"".join(_entry(k, v) for k, v in entries)])
    assert param_orders(data) == [["zeta", "alpha", "mid"]]
    parsed = parse_install_request(data).rules[0]
    assert list(parsed.params.items()) == [("zeta", 2), ("alpha", "a"), ("mid", True)]
    assert parsed == _parse_slowly(data).rules[0]


def test_a_map_entry_without_a_key_is_the_empty_key() -> None:
    rule = bytes(rule_to_proto(make_rule("r", params={"k": 1})))
    data = _request([rule + _entry(None, pb.ParamValue(int_value=3))])
    assert param_orders(data) == [["k", ""]]
    with pytest.raises(RuleValidationError, match="keys must not be empty"):
        parse_install_request(data)


def test_rules_without_params_or_with_one_skip_the_walk() -> None:
    data = _request([bytes(rule_to_proto(make_rule(f"r{i}", params={}))) for i in range(3)])
    assert param_orders(data) == [None, None, None]
    assert _outcome(parse_install_request, data) == _outcome(_parse_slowly, data)


def test_bytes_that_are_no_request_are_refused() -> None:
    with pytest.raises(GRPCError) as info:
        parse_install_request(b"\x12\xff\xff\xff\xff\x0f")
    assert "malformed InstallRulesRequest" in info.value.message


def test_full_slots_are_read_from_upbs_bytes_in_one_piece() -> None:
    from guardrefresh.model._convert import _block_from_canonical
    from guardrefresh.server import upb_class

    rule = make_rule("r", anchors=make_anchors((16, 3, 0, 1), sent=(16, 16, 0, 2), seed=4))
    payload = upb_class(pb.RuleInstance).FromString(bytes(rule_to_proto(rule))).anchors
    block = _block_from_canonical(payload.SerializeToString(), (16, 3, 0, 1), (16, 16, 0, 2))
    assert block is not None and block.tobytes() == rule.anchors.vectors.tobytes()
    # Bytes laid out otherwise (an unknown field in a vector) are left to the slow path.
    vector = payload.action_anchors[0]
    vector.MergeFromString(b"\x10\x01")
    assert _block_from_canonical(payload.SerializeToString(), (16, 3, 0, 1), (16, 16, 0, 2)) is None


def test_an_unknown_field_inside_a_vector_changes_nothing() -> None:
    rule = rule_to_proto(make_rule("r"))
    assert rule.anchors is not None
    rule.anchors.risk_anchors[0]._unknown_fields = b"\x10\x01"
    data = _request([bytes(rule)])
    assert _outcome(parse_install_request, data) == _outcome(_parse_slowly, data)
    assert _outcome(parse_install_request, data)[0] == "ok"
