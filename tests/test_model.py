"""Tests of guardrefresh.model: rule validation (one clear error per problem) and wire conversion."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import pytest
from factories import make_anchors, make_rule, rules
from hypothesis import given, settings

from guardrefresh.model import (
    ANCHOR_DIM,
    BLOCK_SHAPE,
    MAX_ANCHORS,
    MAX_ECHO_CHARS,
    MAX_EXTRAS_BYTES,
    MAX_JSON_DEPTH,
    MAX_NAME_CHARS,
    MAX_REFRESH_FAMILIES,
    MAX_RULE_ID_CHARS,
    POLICY_BY_CODE,
    POLICY_CODES,
    ParamScalar,
    PolicyType,
    Rule,
    RuleAnchors,
    RuleValidationError,
    check_family_ids,
    echo,
    escape_controls,
    json_depth,
    rule_from_proto,
    rule_to_proto,
)
from guardrefresh.proto import rule_installation as pb

NAN = float("nan")
INF = float("inf")
MAX_EXTRAS = 64 * 1024


def vec(value: float = 0.5, width: int = ANCHOR_DIM) -> pb.AnchorVector:
    return pb.AnchorVector(values=[value] * width)


def wire(rule_id: str = "r1") -> pb.RuleInstance:
    """A valid wire rule, to be broken one field at a time."""
    return rule_to_proto(make_rule(rule_id))


def through_bytes(msg: pb.RuleInstance) -> pb.RuleInstance:
    return pb.RuleInstance.parse(bytes(msg))


def assert_names(exc: RuleValidationError, rule_id: str, field: str) -> None:
    assert exc.rule_id == rule_id
    assert exc.field == field
    text = str(exc)
    assert (f"rule {echo(rule_id)}" if rule_id else "rule with empty rule_id") in text
    assert f": {field}: " in text


# -- validation of wire rules: one error, naming the rule and the field ---------------------


def _anchors(msg: pb.RuleInstance) -> pb.RuleAnchorsPayload:
    assert msg.anchors is not None
    return msg.anchors


def _set_params(**params: pb.ParamValue) -> Callable[[pb.RuleInstance], None]:
    def change(msg: pb.RuleInstance) -> None:
        msg.params = {**msg.params, **params}

    return change


def _big_params(msg: pb.RuleInstance) -> None:
    # 70 values of 1000 bytes: each is fine, together they exceed 64 KiB.
    msg.params = {f"k{i}": pb.ParamValue(string_value="x" * 1000) for i in range(70)}


def _set(**fields: Any) -> Callable[[pb.RuleInstance], None]:
    def change(msg: pb.RuleInstance) -> None:
        for name, value in fields.items():
            setattr(msg, name, value)

    return change


def _set_anchor(slot: str, index: int, value: pb.AnchorVector) -> Callable[[pb.RuleInstance], None]:
    def change(msg: pb.RuleInstance) -> None:
        vectors = getattr(_anchors(msg), f"{slot}_anchors")
        vectors[index] = value

    return change


def _slot(
    slot: str, vectors: list[pb.AnchorVector], count: int
) -> Callable[[pb.RuleInstance], None]:
    def change(msg: pb.RuleInstance) -> None:
        setattr(_anchors(msg), f"{slot}_anchors", vectors)
        setattr(_anchors(msg), f"{slot}_count", count)

    return change


def _nan_in_component(value: float) -> Callable[[pb.RuleInstance], None]:
    def change(msg: pb.RuleInstance) -> None:
        values = list(_anchors(msg).risk_anchors[1].values)
        values[17] = value
        _anchors(msg).risk_anchors[1] = pb.AnchorVector(values=values)

    return change


# (id, change to a valid wire rule, field named in the error, fragment of the problem)
WIRE_CASES: list[tuple[str, Callable[[pb.RuleInstance], None], str, str]] = [
    (
        "anchor-too-narrow",
        _set_anchor("action", 0, vec(width=31)),
        "anchors.action_anchors[0]",
        "got 31",
    ),
    ("anchor-too-wide", _set_anchor("risk", 2, vec(width=33)), "anchors.risk_anchors[2]", "got 33"),
    (
        "anchor-empty",
        _set_anchor("resource", 1, vec(width=0)),
        "anchors.resource_anchors[1]",
        "got 0",
    ),
    ("17-anchors", _slot("data", [vec()] * 17, 17), "anchors.data_anchors", "at most 16"),
    (
        "count-too-high",
        _slot("resource", [vec(), vec()], 3),
        "anchors.resource_count",
        "count 3 exceeds the 2 resource anchor vectors sent",
    ),
    ("count-negative", _slot("action", [vec(), vec()], -1), "anchors.action_count", "got -1"),
    ("count-without-vectors", _slot("data", [], 1), "anchors.data_count", "exceeds"),
    ("nan-in-padding", _slot("data", [vec(), vec(NAN)], 1), "anchors.data_anchors[1]", "finite"),
    (
        "narrow-padding",
        _slot("action", [vec(), vec(width=31)], 0),
        "anchors.action_anchors[1]",
        "31",
    ),
    (
        "17-padded",
        _slot("risk", [vec()] * 17, 1),
        "anchors.risk_anchors",
        "at most 16 anchors, got 17",
    ),
    ("anchor-nan", _set_anchor("action", 0, vec(NAN)), "anchors.action_anchors[0]", "finite"),
    ("anchor-inf", _set_anchor("resource", 0, vec(INF)), "anchors.resource_anchors[0]", "finite"),
    ("anchor-one-nan", _nan_in_component(NAN), "anchors.risk_anchors[1]", "finite"),
    ("anchor-one-minus-inf", _nan_in_component(-INF), "anchors.risk_anchors[1]", "finite"),
    ("drift-nan", _set(drift_threshold=NAN), "drift_threshold", "finite"),
    ("drift-inf", _set(drift_threshold=INF), "drift_threshold", "finite"),
    ("drift-negative", _set(drift_threshold=-0.5), "drift_threshold", ">= 0"),
    ("weights-nan", _set(slice_weights=[0.1, NAN, 0.2, 0.3]), "slice_weights", "finite"),
    ("weights-inf", _set(slice_weights=[0.1, 0.2, 0.3, -INF]), "slice_weights", "finite"),
    ("weights-3", _set(slice_weights=[0.1, 0.2, 0.3]), "slice_weights", "got 3"),
    ("weights-5", _set(slice_weights=[0.1] * 5), "slice_weights", "got 5"),
    ("weights-1", _set(slice_weights=[1.0]), "slice_weights", "got 1"),
    (
        "float-param-nan",
        _set_params(ratio=pb.ParamValue(float_value=NAN)),
        "params['ratio']",
        "finite",
    ),
    (
        "float-param-inf",
        _set_params(ratio=pb.ParamValue(float_value=INF)),
        "params['ratio']",
        "finite",
    ),
    ("param-unset", _set_params(hole=pb.ParamValue()), "params['hole']", "not set"),
    ("params-too-large", _big_params, "params", "exceed 65536 bytes"),
    ("policy-empty", _set(policy_type=""), "policy_type", "unknown policy type ''"),
    ("policy-unknown", _set(policy_type="allow"), "policy_type", "unknown policy type 'allow'"),
    (
        "policy-case",
        _set(policy_type="FORBIDDEN"),
        "policy_type",
        "allowed: forbidden, context_allow",
    ),
    ("spec-truncated", _set(modification_spec='{"a": '), "modification_spec", "must be JSON"),
    ("spec-not-json", _set(modification_spec="redact ssn"), "modification_spec", "must be JSON"),
    ("spec-trailing", _set(modification_spec="{} {}"), "modification_spec", "must be JSON"),
    (
        "spec-nan",
        _set(modification_spec='{"t": NaN}'),
        "modification_spec",
        "NaN is not valid JSON",
    ),
    ("spec-infinity", _set(modification_spec="Infinity"), "modification_spec", "not valid JSON"),
    ("family-too-long", _set(family_id="f" * 129), "family_id", "at most 128"),
    ("layer-nul", _set(layer="L\x001"), "layer", "NUL"),
]


@pytest.mark.parametrize(
    ("change", "field", "problem"), [c[1:] for c in WIRE_CASES], ids=[c[0] for c in WIRE_CASES]
)
def test_wire_rule_rejected_with_one_clear_error(
    change: Callable[[pb.RuleInstance], None], field: str, problem: str
) -> None:
    msg = wire("rule-7")
    rule_from_proto(msg)  # the unbroken rule is valid
    change(msg)
    with pytest.raises(RuleValidationError) as info:
        rule_from_proto(msg)
    assert_names(info.value, "rule-7", field)
    assert problem in info.value.problem


@pytest.mark.parametrize(
    ("change", "field", "problem"), [c[1:] for c in WIRE_CASES], ids=[c[0] for c in WIRE_CASES]
)
def test_wire_rule_rejected_after_serialisation_too(
    change: Callable[[pb.RuleInstance], None], field: str, problem: str
) -> None:
    # What arrives over gRPC went through protobuf: float32 fields, packed repeats, map entries.
    msg = wire("rule-8")
    change(msg)
    with pytest.raises(RuleValidationError) as info:
        rule_from_proto(through_bytes(msg))
    assert_names(info.value, "rule-8", field)
    assert problem in info.value.problem


def test_empty_rule_id_rejected() -> None:
    with pytest.raises(RuleValidationError) as info:
        rule_from_proto(wire(""))
    assert_names(info.value, "", "rule_id")
    assert str(info.value) == "rule with empty rule_id: rule_id: must not be empty"


def test_rule_id_length_limit_is_256_characters() -> None:
    longest = "é" * MAX_RULE_ID_CHARS  # characters, not bytes
    assert rule_from_proto(wire(longest)).rule_id == longest
    with pytest.raises(RuleValidationError) as info:
        rule_from_proto(wire(longest + "x"))
    assert_names(info.value, longest + "x", "rule_id")
    assert "at most 256 characters, got 257" in str(info.value)


def test_sixteen_anchors_per_slot_is_the_limit() -> None:
    msg = wire()
    for slot in ("action", "resource", "data", "risk"):
        _slot(slot, [vec(float(i)) for i in range(MAX_ANCHORS)], MAX_ANCHORS)(msg)
    rule = rule_from_proto(through_bytes(msg))
    assert rule.anchors.counts == (16, 16, 16, 16)
    assert rule.anchors.slot(3)[15].tolist() == [15.0] * ANCHOR_DIM


def _padded_payload(counts: tuple[int, int, int, int], padding: float) -> pb.RuleAnchorsPayload:
    """16 vectors per slot with ``counts`` real anchors, as the management plane sends them."""

    def slot(s: int) -> list[pb.AnchorVector]:
        return [
            vec(float(s * 100 + i + 1)) if i < counts[s] else vec(padding)
            for i in range(MAX_ANCHORS)
        ]

    return pb.RuleAnchorsPayload(
        action_anchors=slot(0),
        action_count=counts[0],
        resource_anchors=slot(1),
        resource_count=counts[1],
        data_anchors=slot(2),
        data_count=counts[2],
        risk_anchors=slot(3),
        risk_count=counts[3],
    )


@pytest.mark.parametrize("padding", [0.0, 7.5], ids=["zero-padding", "non-zero-padding"])
def test_padded_slots_are_accepted_and_only_the_counted_anchors_are_scored(
    padding: float,
) -> None:
    msg = wire()
    msg.anchors = _padded_payload((1, 0, 16, 3), padding)
    rule = rule_from_proto(through_bytes(msg))
    assert rule.anchors.counts == (1, 0, 16, 3)
    assert rule.anchors.sent == (16, 16, 16, 16)
    # The scored view is the first `count` vectors only.
    assert rule.anchors.slot(0).tolist() == [[1.0] * ANCHOR_DIM]
    assert rule.anchors.slot(1).shape == (0, ANCHOR_DIM)
    assert rule.anchors.slot(3)[:, 0].tolist() == [301.0, 302.0, 303.0]
    # Padding is kept as sent.
    assert rule.anchors.sent_slot(3)[3:].tolist() == [[padding] * ANCHOR_DIM] * 13
    # And the rule goes back on the wire exactly as it came.
    assert rule_to_proto(rule) == msg
    assert bytes(rule_to_proto(rule)) == bytes(msg)


def test_padding_is_part_of_rule_equality() -> None:
    plain = make_anchors((1, 0, 0, 0))
    padded = make_anchors((1, 0, 0, 0), sent=(3, 0, 0, 0))
    zero_padded = RuleAnchors.from_slots(
        [[plain.slot(0)[0].tolist(), [0.0] * ANCHOR_DIM], [], [], []], (1, 0, 0, 0)
    )
    assert padded.counts == plain.counts and padded.sent == (3, 0, 0, 0)
    assert np.array_equal(padded.slot(0), plain.slot(0))
    # Same scored anchors, different rules as installed: GetRule must tell them apart.
    assert padded != plain
    assert zero_padded != plain
    assert zero_padded.sent == (2, 0, 0, 0)


def test_counts_default_to_every_vector_sent() -> None:
    anchors = RuleAnchors.from_slots([[[1.0] * ANCHOR_DIM] * 2, [], [], []])
    assert anchors.counts == anchors.sent == (2, 0, 0, 0)
    assert RuleAnchors(anchors.vectors, (1, 0, 0, 0)).sent == (1, 0, 0, 0)


def test_stored_blocks_check_count_against_vectors_sent() -> None:
    block = make_anchors((2, 0, 0, 0)).vectors
    RuleAnchors(block, (1, 0, 0, 0), (2, 0, 0, 0)).validate("r")
    for counts, sent in (((3, 0, 0, 0), (2, 0, 0, 0)), ((0, 0, 0, 0), (0, 0, 0, 17))):
        with pytest.raises(RuleValidationError) as info:
            RuleAnchors(block, counts, sent).validate("r")
        assert "count <= vectors sent <= 16" in str(info.value)


def test_float32_overflow_in_anchor_is_rejected() -> None:
    # 1e39 is a finite double but not a finite float32: the block stores float32.
    msg = wire()
    _set_anchor("action", 0, vec(1e39))(msg)
    with pytest.raises(RuleValidationError) as info:
        rule_from_proto(msg)
    assert_names(info.value, "r1", "anchors.action_anchors[0]")


def test_params_size_limit_is_64_kib_of_utf8() -> None:
    # key "k" counts 1 + 8 bytes; the value fills the rest exactly.
    exact = {"k": "x" * (MAX_EXTRAS - 9)}
    make_rule(params=exact, modification_spec="")
    with pytest.raises(RuleValidationError) as info:
        make_rule("big", params={"k": "x" * (MAX_EXTRAS - 8)}, modification_spec="")
    assert_names(info.value, "big", "params")
    assert f"({MAX_EXTRAS + 1})" in str(info.value)
    # Multi-byte characters count as their UTF-8 length.
    with pytest.raises(RuleValidationError):
        make_rule("big", params={"k": "é" * (MAX_EXTRAS // 2)}, modification_spec="")


def test_modification_spec_counts_towards_the_size_limit() -> None:
    spec = json.dumps("x" * (MAX_EXTRAS - 100))
    make_rule(params={}, modification_spec=spec)
    with pytest.raises(RuleValidationError) as info:
        make_rule("spec", params={"k": "x" * 100}, modification_spec=spec)
    assert "params and modification_spec exceed 65536 bytes" in str(info.value)


def test_valid_modification_specs_accepted() -> None:
    for spec in (
        "",
        "{}",
        "[]",
        "null",
        "1.5e3",
        '"s"',
        '{"a": [1, {"b": null}]}',
        ' {"é": "\\u00e9"} ',
    ):
        assert make_rule(modification_spec=spec).modification_spec == spec


# -- validation of rules built in Python ----------------------------------------------------

# (id, fields that break a valid rule, field named in the error, fragment of the problem)
RULE_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("priority-above-int32", {"priority": 2**31}, "priority", "must be in -2147483648..2147483647"),
    ("priority-below-int32", {"priority": -(2**31) - 1}, "priority", "got -2147483649"),
    ("priority-bool", {"priority": True}, "priority", "must be an integer, got bool"),
    ("priority-float", {"priority": 1.0}, "priority", "must be an integer, got float"),
    ("created-above-int64", {"created_at_ms": 2**63}, "created_at_ms", "must be in"),
    ("created-below-int64", {"created_at_ms": -(2**63) - 1}, "created_at_ms", "must be in"),
    ("int-param-above-int64", {"params": {"n": 2**63}}, "params['n']", "must be in"),
    ("int-param-below-int64", {"params": {"n": -(2**63) - 1}}, "params['n']", "must be in"),
    ("float-param-nan", {"params": {"f": NAN}}, "params['f']", "finite"),
    ("float-param-minus-inf", {"params": {"f": -INF}}, "params['f']", "finite"),
    ("param-key-empty", {"params": {"": 1}}, "params", "keys must not be empty"),
    ("param-key-too-long", {"params": {"k" * 129: 1}}, f"params[{echo('k' * 129)}]", "at most 128"),
    ("param-list-of-ints", {"params": {"l": [1, 2]}}, "params['l']", "must be a string, got int"),
    ("param-bytes", {"params": {"b": b"x"}}, "params['b']", "unsupported value type bytes"),
    ("param-surrogate", {"params": {"s": "\ud800"}}, "params['s']", "no lone surrogates"),
    (
        "too-many-params",
        {"params": {f"k{i}": i for i in range(257)}},
        "params",
        "at most 256 entries",
    ),
    ("enabled-int", {"enabled": 1}, "enabled", "must be a bool"),
    ("policy-str", {"policy_type": "forbidden"}, "policy_type", "must be a PolicyType"),
    ("drift-float32-overflow", {"drift_threshold": 1e39}, "drift_threshold", "got inf"),
    ("weights-float32-overflow", {"slice_weights": (1e39, 0, 0, 0)}, "slice_weights", "finite"),
    ("weights-2", {"slice_weights": (0.5, 0.5)}, "slice_weights", "got 2"),
    ("agent-surrogate", {"agent_id": "a\udc00"}, "agent_id", "no lone surrogates"),
    ("owner-too-long", {"owner": "o" * 129}, "owner", "at most 128"),
    ("installed-by-int", {"installed_by": 5}, "installed_by", "must be a string"),
    (
        "spec-surrogate",
        {"modification_spec": '"\ud800"'},
        "modification_spec",
        "no lone surrogates",
    ),
    ("spec-not-str", {"modification_spec": b"{}"}, "modification_spec", "must be a string"),
    ("spec-nul", {"modification_spec": '{"a": 1}\x00'}, "modification_spec", "NUL"),
    (
        "spec-minus-infinity",
        {"modification_spec": "[-Infinity]"},
        "modification_spec",
        "not valid JSON",
    ),
    (
        "bad-anchor-count",
        {"anchors": RuleAnchors(make_anchors().vectors, (17, 0, 0, 0))},
        "anchors.action_count",
        "got count 17 of 17 vectors",
    ),
    (
        "bad-anchor-shape",
        {"anchors": RuleAnchors(np.zeros((4, 16, 31), np.float32), (0, 0, 0, 0))},
        "anchors",
        "block must be float32",
    ),
    (
        "nan-in-stored-block",
        {"anchors": RuleAnchors(np.full(BLOCK_SHAPE, NAN, np.float32), (0, 0, 0, 0))},
        "anchors",
        "finite",
    ),
]


@pytest.mark.parametrize(
    ("fields", "field", "problem"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES]
)
def test_rule_validate_names_rule_and_field(
    fields: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(RuleValidationError) as info:
        make_rule("rule-9", **fields)
    assert_names(info.value, "rule-9", field)
    assert problem in info.value.problem


def test_integer_bounds_are_inclusive() -> None:
    rule = make_rule(
        priority=-(2**31),
        created_at_ms=2**63 - 1,
        params={"lo": -(2**63), "hi": 2**63 - 1},
    )
    assert (
        rule_from_proto(
            through_bytes(rule_to_proto(rule)),
            installed_by="agent-x",
            config_id="cfg-1",
            owner="team-a",
        )
        == rule
    )
    make_rule(priority=2**31 - 1, created_at_ms=-(2**63))


def test_anchor_slots_must_be_four() -> None:
    with pytest.raises(RuleValidationError) as info:
        RuleAnchors.from_slots([[], [], []], rule_id="r")
    assert_names(info.value, "r", "anchors")


def test_errors_are_value_errors_with_attributes() -> None:
    exc = RuleValidationError("r", "priority", "too big")
    assert isinstance(exc, ValueError)
    assert (exc.rule_id, exc.field, exc.problem) == ("r", "priority", "too big")
    assert str(exc) == "rule 'r': priority: too big"


# -- the Rule value object ------------------------------------------------------------------


def test_rule_is_immutable() -> None:
    rule = make_rule()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        rule.priority = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        rule.params["limit"] = 4  # type: ignore[index]
    with pytest.raises(ValueError, match="read-only"):
        rule.anchors.vectors[0, 0, 0] = 1.0


def test_param_lists_become_tuples_and_floats_become_float32() -> None:
    rule = Rule(
        rule_id="r",
        params={"l": ["a", "b"]},  # type: ignore[dict-item]
        drift_threshold=0.1,
        slice_weights=[0.1, 0.2, 0.3, 0.4],
    )
    assert rule.params["l"] == ("a", "b")
    assert rule.drift_threshold == float(np.float32(0.1)) != 0.1
    assert rule.slice_weights == tuple(float(np.float32(w)) for w in (0.1, 0.2, 0.3, 0.4))


def test_param_types_matter_for_equality() -> None:
    base = make_rule(params={"v": 1})
    assert base != make_rule(params={"v": 1.0})
    assert base != make_rule(params={"v": True})
    assert make_rule(params={"v": 0}) != make_rule(params={"v": False})
    assert base == make_rule(params={"v": 1})


def test_anchor_equality_is_bitwise() -> None:
    zero = RuleAnchors.from_slots([[[0.0] * 32], [], [], []])
    negative_zero = RuleAnchors.from_slots([[[-0.0] * 32], [], [], []])
    assert zero != negative_zero
    assert zero == RuleAnchors.from_slots([[[0.0] * 32], [], [], []])
    assert make_rule(seed=1) != make_rule(seed=2)
    assert make_rule(seed=1) == make_rule(seed=1)


def test_anchor_slots_are_views_of_one_block() -> None:
    anchors = make_anchors((1, 2, 0, 3), seed=5)
    assert anchors.vectors.shape == BLOCK_SHAPE
    assert anchors.vectors.dtype == np.float32
    assert [anchors.slot(s).shape for s in range(4)] == [(1, 32), (2, 32), (0, 32), (3, 32)]
    assert np.shares_memory(anchors.slot(1), anchors.vectors)
    # Rows past a slot's count are zero.
    assert not anchors.vectors[0, 1:].any() and not anchors.vectors[2].any()
    assert RuleAnchors.empty().counts == (0, 0, 0, 0)
    assert not RuleAnchors.empty().vectors.any()


def test_policy_codes_are_stable() -> None:
    # Stored in warm storage: renumbering would change what stored rules do.
    assert {p.value: code for p, code in POLICY_CODES.items()} == {
        "forbidden": 1,
        "context_allow": 2,
        "context_deny": 3,
        "context_defer": 4,
    }
    assert {code: p for p, code in POLICY_CODES.items()} == POLICY_BY_CODE


def test_global_and_scoped_rules() -> None:
    assert make_rule(agent_id="").is_global
    assert not make_rule(agent_id="agent-1").is_global


# -- conversion to and from the wire --------------------------------------------------------


def _from_wire(rule: Rule) -> Rule:
    return rule_from_proto(
        through_bytes(rule_to_proto(rule)),
        installed_by=rule.installed_by,
        config_id=rule.config_id,
        owner=rule.owner,
    )


def test_to_proto_sets_every_wire_field() -> None:
    # If the contract grows a field, this fails until the conversion carries it.
    msg = rule_to_proto(make_rule(agent_id="agent-1"))
    defaults = pb.RuleInstance()
    unset = [
        f.name
        for f in dataclasses.fields(pb.RuleInstance)
        if getattr(msg, f.name) == getattr(defaults, f.name)
    ]
    assert unset == []


def test_proto_round_trip_every_field() -> None:
    rule = make_rule(
        "r-42",
        family_id="family",
        layer="L3",
        agent_id="agent-9",
        priority=-12,
        enabled=False,
        created_at_ms=-5,
        policy_type=PolicyType.CONTEXT_DEFER,
        drift_threshold=3.5,
        modification_spec='{"replace": {"a": "b"}}',
        slice_weights=(1.0, -0.0, 2.5, 1e-40),
    )
    back = _from_wire(rule)
    assert back == rule
    assert attrs.asdict(back, recurse=False) == attrs.asdict(rule, recurse=False)
    assert math.copysign(1.0, back.slice_weights[1]) == -1.0


def test_wire_only_fields_come_from_the_caller() -> None:
    msg = rule_to_proto(make_rule(installed_by="a", config_id="c", owner="o"))
    back = rule_from_proto(msg)
    assert (back.installed_by, back.config_id, back.owner) == ("", "", "")
    back = rule_from_proto(msg, installed_by="a2", config_id="c2", owner="o2")
    assert (back.installed_by, back.config_id, back.owner) == ("a2", "c2", "o2")


def test_param_types_survive_the_wire() -> None:
    params = {
        "bool_true": True,
        "bool_false": False,
        "int_one": 1,
        "int_zero": 0,
        "float_one": 1.0,
        "float_zero": 0.0,
        "float_negative_zero": -0.0,
        "float_big": 1e300,
        "str": "1",
        "str_empty": "",
        "list": ("1", "é"),
        "list_empty": (),
    }
    back = _from_wire(make_rule(params=params))
    assert dict(back.params) == params
    assert {k: type(v) for k, v in back.params.items()} == {k: type(v) for k, v in params.items()}
    assert math.copysign(1.0, back.params["float_negative_zero"]) == -1.0  # type: ignore[arg-type]


def test_wire_param_kinds() -> None:
    msg = wire()
    msg.params = {
        "b": pb.ParamValue(bool_value=False),
        "i": pb.ParamValue(int_value=0),
        "f": pb.ParamValue(float_value=0.0),
        "s": pb.ParamValue(string_value=""),
        "l": pb.ParamValue(string_list=pb.StringList(values=[])),
    }
    params = rule_from_proto(through_bytes(msg)).params
    assert {k: (type(v), v) for k, v in params.items()} == {
        "b": (bool, False),
        "i": (int, 0),
        "f": (float, 0.0),
        "s": (str, ""),
        "l": (tuple, ()),
    }


def test_anchor_bits_survive_the_wire() -> None:
    special = [
        -0.0,
        0.0,
        1e-45,
        -1e-45,
        1.17549435e-38,
        3.4028234663852886e38,
        -3.4028234663852886e38,
        1.0 / 3,
    ]
    row = special + [float(i) for i in range(ANCHOR_DIM - len(special))]
    rule = make_rule(anchors=RuleAnchors.from_slots([[row], [], [row, row], []]))
    back = _from_wire(rule)
    assert back.anchors == rule.anchors
    assert back.anchors.vectors.tobytes() == rule.anchors.vectors.tobytes()
    assert struct.pack("<f", back.anchors.vectors[0, 0, 0]) == struct.pack("<f", -0.0)


def test_missing_anchor_payload_means_no_anchors() -> None:
    msg = wire()
    msg.anchors = None
    assert rule_from_proto(through_bytes(msg)).anchors == RuleAnchors.empty()


@pytest.mark.parametrize("policy", list(PolicyType), ids=[p.value for p in PolicyType])
def test_policy_type_survives_the_wire(policy: PolicyType) -> None:
    msg = rule_to_proto(make_rule(policy_type=policy))
    assert msg.policy_type == policy.value
    assert rule_from_proto(through_bytes(msg)).policy_type is policy


@settings(max_examples=100, deadline=None)
@given(rules())
def test_any_valid_rule_round_trips_through_the_wire(rule: Rule) -> None:
    assert _from_wire(rule) == rule
    # And the wire form itself is stable.
    assert bytes(rule_to_proto(_from_wire(rule))) == bytes(rule_to_proto(rule))


# -- limits at the edge: JSON depth, bytes of params, family ids, echoes, -0.0 ---------------


def test_json_depth_counts_nesting_outside_strings() -> None:
    assert json_depth("1") == 0
    assert json_depth('{"a": [1, {"b": []}]}') == 4
    assert json_depth('[{"b": 1}, [2]]') == 2
    assert json_depth('{"a": "[[[[{{{{", "b": "\\"[["}') == 1
    assert json_depth("[" * 5000 + "]" * 5000) == 5000


@pytest.mark.parametrize("depth", [65, 1000, 10_000])
@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_modification_spec_nested_too_deep_names_the_field(depth: int, kind: str) -> None:
    spec = "[" * depth + "]" * depth if kind == "arrays" else '{"a":' * depth + "1" + "}" * depth
    with pytest.raises(RuleValidationError) as info:
        make_rule("deep", modification_spec=spec).validate()
    assert_names(info.value, "deep", "modification_spec")
    assert info.value.problem == f"JSON nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}"


def test_modification_spec_at_the_depth_limit_is_valid() -> None:
    spec = '{"a":' * MAX_JSON_DEPTH + "1" + "}" * MAX_JSON_DEPTH
    make_rule("deep", modification_spec=spec).validate()
    assert MAX_JSON_DEPTH == 64


@pytest.mark.parametrize(
    ("char", "keys"),
    [
        ("\u00e9", 256),  # 2 bytes: 128 characters of keys are 256 bytes, 64 KiB + 2,048 in all
        ("\u20ac", 200),  # 3 bytes
        ("\U0001f600", 140),  # 4 bytes
    ],
)
def test_params_bound_counts_key_bytes_not_characters(char: str, keys: int) -> None:
    params: dict[str, ParamScalar] = {f"{i:03d}" + char * 125: True for i in range(keys)}
    # What the bound counts: each key and 8 bytes per entry (its value's framing).
    overhead = 8 * len(params)
    assert sum(len(k.encode()) for k in params) + overhead > MAX_EXTRAS_BYTES
    assert sum(len(k) for k in params) + overhead < MAX_EXTRAS_BYTES
    with pytest.raises(RuleValidationError, match=r"exceed 65536 bytes"):
        make_rule("big", params=params, modification_spec="").validate()
    ascii_params: dict[str, ParamScalar] = {f"{i:03d}" + "k" * 125: True for i in range(keys)}
    make_rule("ok", params=ascii_params, modification_spec="").validate()


def test_check_family_ids() -> None:
    assert check_family_ids(["a", "f" * MAX_NAME_CHARS, "ünï"]) == ["a", "f" * 128, "ünï"]
    assert check_family_ids([f"f{i}" for i in range(MAX_REFRESH_FAMILIES)])[-1] == "f999"
    cases: list[tuple[list[Any], str]] = [
        ([f"f{i}" for i in range(MAX_REFRESH_FAMILIES + 1)], "at most 1000 family ids, got 1001"),
        (["a", ""], "family_ids[1]: must not be empty"),
        (["f" * 129], "family_ids[0]: at most 128 characters, got 129"),
        (["fam\n2026-01-01 ERROR x: FORGED"], "family_ids[0]: must not contain NUL or other"),
        (["a\x00b"], "control characters"),
        (["a\u2028b"], "control characters"),
        (["\ud800"], "no lone surrogates"),
        ([7], "family_ids[0]: must be a string, got int"),
    ]
    for values, expected in cases:
        with pytest.raises(ValueError) as info:
            check_family_ids(values)
        assert expected in str(info.value)
        assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_echo_quotes_and_shortens_client_values() -> None:
    assert echo("abc") == "'abc'"
    assert echo("a\nb\x00") == "'a\\nb\\x00'"
    assert echo("x" * MAX_ECHO_CHARS) == repr("x" * 120)
    long = echo("y" * 20_000)
    assert long == "'" + "y" * 120 + "…' (20000 characters)"
    assert echo(7) == "7" and echo(None) == "None"
    assert echo(["z" * 200]) == "['" + "z" * 118 + "…"
    assert escape_controls("a\r\n\x1b\u2028\x85b") == "a\\r\\n\\x1b\\u2028\\x85b"
    assert escape_controls("plain, ünï 家族") == "plain, ünï 家族"


def test_validation_errors_echo_long_values_shortened() -> None:
    long = "z" * 20_000
    for fields in ({"policy_type": long}, {"params": {long: 1}}):
        with pytest.raises(RuleValidationError) as info:
            if "policy_type" in fields:
                PolicyType.parse(long, rule_id=long)
            make_rule(long, **fields).validate()
        assert len(str(info.value)) < 600, str(info.value)[:300]
        assert "…' (20000 characters)" in str(info.value)


def test_negative_zero_drift_threshold_is_on_the_wire() -> None:
    for value, sign in ((-0.0, -1.0), (0.0, 1.0), (0.25, 1.0)):
        rule = make_rule("z", drift_threshold=value)
        back = pb.RuleInstance.parse(bytes(rule_to_proto(rule)))
        assert back.drift_threshold == value
        assert math.copysign(1.0, back.drift_threshold) == sign
        assert rule_from_proto(back, installed_by=rule.installed_by) == attrs.evolve(
            rule, config_id="", owner=""
        )
    # Inside a response too, as GetRule sends it.
    response = pb.GetRuleResponse(
        found=True, rule=rule_to_proto(make_rule("z", drift_threshold=-0.0))
    )
    parsed = pb.GetRuleResponse.parse(bytes(response))
    assert parsed.rule is not None
    assert math.copysign(1.0, parsed.rule.drift_threshold) == -1.0
