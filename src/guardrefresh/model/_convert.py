"""Conversion between :class:`Rule` and the wire's ``RuleInstance``."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import betterproto2
import numpy as np

from ..proto import rule_installation as pb
from ._anchors import ANCHOR_DIM, BLOCK_SHAPE, MAX_ANCHORS, Float32Array, RuleAnchors
from ._errors import RuleValidationError
from ._rule import ParamScalar, PolicyType, Rule


def rule_from_proto(
    msg: pb.RuleInstance, *, installed_by: str = "", config_id: str = "", owner: str = ""
) -> Rule:
    """Build and validate a :class:`Rule` from the wire.

    Raises :class:`RuleValidationError` naming the rule and field on the
    first problem (unknown policy type, anchor width, NaN, ...).
    """
    rid = msg.rule_id
    params = {key: _param_from_proto(rid, key, value) for key, value in msg.params.items()}
    anchors = _anchors_from_proto(rid, msg.anchors)
    return _validated_rule(
        msg, params, anchors, installed_by=installed_by, config_id=config_id, owner=owner
    )


def _validated_rule(
    msg: Any,
    params: dict[str, ParamScalar],
    anchors: RuleAnchors,
    *,
    installed_by: str,
    config_id: str,
    owner: str,
) -> Rule:
    """The rule of a parsed ``RuleInstance`` (betterproto2's or upb's: the same field
    names) whose params and anchors are converted already; checked in the order
    :class:`Rule`'s fields are, so both parsers report the same first problem."""
    rid = msg.rule_id
    rule = Rule(
        rule_id=rid,
        family_id=msg.family_id,
        layer=msg.layer,
        agent_id=msg.agent_id,
        priority=msg.priority,
        enabled=msg.enabled,
        created_at_ms=msg.created_at_ms,
        params=params,
        anchors=anchors,
        policy_type=PolicyType.parse(msg.policy_type, rule_id=rid),
        drift_threshold=_finite_f32(rid, "drift_threshold", msg.drift_threshold),
        modification_spec=msg.modification_spec,
        slice_weights=tuple(msg.slice_weights),
        installed_by=installed_by,
        config_id=config_id,
        owner=owner,
    )
    rule.validate()
    return rule


def rule_from_upb(
    msg: Any,
    *,
    installed_by: str = "",
    config_id: str = "",
    owner: str = "",
    param_keys: Sequence[str] | None = None,
) -> Rule:
    """:func:`rule_from_proto` for a ``RuleInstance`` parsed by protobuf's C runtime.

    ``msg`` is an instance of ``guardrefresh.server.upb_class(pb.RuleInstance)``
    (an InstallRules request parsed in C, about 30 times faster than betterproto2
    for rules with full anchor slots). The result and the validation are those of
    :func:`rule_from_proto` for the same bytes: the same checks in the same order, so
    the same :class:`RuleValidationError` for the same problem.

    upb keeps map entries in hash order; betterproto2 (and the rule as sent) in wire
    order. ``param_keys`` gives the keys of ``params`` in wire order (each once);
    without it the rule's params follow upb's order.
    """
    rid = msg.rule_id
    sent = msg.params
    params = {
        key: _param_from_upb(rid, key, sent[key])
        for key in (sent if param_keys is None else param_keys)
    }
    anchors = (
        _anchors_from_upb(rid, msg.anchors) if msg.HasField("anchors") else RuleAnchors.empty()
    )
    return _validated_rule(
        msg, params, anchors, installed_by=installed_by, config_id=config_id, owner=owner
    )


def rule_to_proto(rule: Rule) -> pb.RuleInstance:
    """The wire form of a rule; every ``RuleInstance`` field is carried."""
    a = rule.anchors

    def vectors(slot: int) -> list[pb.AnchorVector]:
        # Padding included: a rule reads back exactly as it was installed.
        return [pb.AnchorVector(values=row.tolist()) for row in a.sent_slot(slot)]

    message = pb.RuleInstance(
        rule_id=rule.rule_id,
        family_id=rule.family_id,
        layer=rule.layer,
        agent_id=rule.agent_id,
        priority=rule.priority,
        enabled=rule.enabled,
        created_at_ms=rule.created_at_ms,
        params={key: _param_to_proto(value) for key, value in rule.params.items()},
        anchors=pb.RuleAnchorsPayload(
            action_anchors=vectors(0),
            action_count=a.counts[0],
            resource_anchors=vectors(1),
            resource_count=a.counts[1],
            data_anchors=vectors(2),
            data_count=a.counts[2],
            risk_anchors=vectors(3),
            risk_count=a.counts[3],
        ),
        policy_type=rule.policy_type.value,
        drift_threshold=rule.drift_threshold,
        modification_spec=rule.modification_spec,
        slice_weights=list(rule.slice_weights),
    )
    if rule.drift_threshold == 0 and math.copysign(1.0, rule.drift_threshold) < 0:
        _append_negative_zero(message, "drift_threshold")
    return message


def _append_negative_zero(message: pb.RuleInstance, field: str) -> None:
    """Put ``-0.0`` for the float ``field`` on the wire.

    betterproto2 leaves out a scalar equal to its default, and ``-0.0 == 0.0``; so a
    stored -0.0 would reach the client as 0.0 (protobuf's own encoders compare the
    bits and send it). The field is appended to the bytes betterproto2 writes after
    the known fields (a parser keeps the last value of a scalar field, wherever it
    sits). Relies on betterproto2's field metadata and ``_unknown_fields``; the
    GetRule tests over grpcio fail if an upgrade changes either.
    """
    meta = message._betterproto.meta_by_field_name[field]
    if meta.proto_type != "float":  # wire type 5 (fixed32) below
        raise TypeError(f"{field} is a {meta.proto_type}, not a float")
    tag = betterproto2.encode_varint(meta.number << 3 | 5)
    message._unknown_fields = bytes(message._unknown_fields) + tag + struct.pack("<f", -0.0)


def _finite_f32(rid: str, field: str, value: float) -> float:
    if not math.isfinite(value):
        raise RuleValidationError(rid, field, "must be finite (no NaN or inf)")
    return value


def _anchors_from_proto(rid: str, payload: pb.RuleAnchorsPayload | None) -> RuleAnchors:
    if payload is None:
        return RuleAnchors.empty()
    slots = [
        [v.values for v in payload.action_anchors],
        [v.values for v in payload.resource_anchors],
        [v.values for v in payload.data_anchors],
        [v.values for v in payload.risk_anchors],
    ]
    counts = [payload.action_count, payload.resource_count, payload.data_count, payload.risk_count]
    return RuleAnchors.from_slots(slots, counts, rule_id=rid)


def _anchors_from_upb(rid: str, payload: Any) -> RuleAnchors:
    vectors = (
        payload.action_anchors,
        payload.resource_anchors,
        payload.data_anchors,
        payload.risk_anchors,
    )
    counts = (payload.action_count, payload.resource_count, payload.data_count, payload.risk_count)
    sent = (len(vectors[0]), len(vectors[1]), len(vectors[2]), len(vectors[3]))
    if all(0 <= c <= n <= MAX_ANCHORS for c, n in zip(counts, sent, strict=True)) and all(
        len(v.values) == ANCHOR_DIM for slot in vectors for v in slot
    ):
        block = _block_from_canonical(payload.SerializeToString(), counts, sent)
        if block is not None and np.isfinite(block).all():
            block.flags.writeable = False
            return RuleAnchors(block, counts, sent)
    # Something is wrong (or unusual): the validating constructor finds it and words it
    # as for betterproto2's objects (the first bad slot, vector and field).
    slots = [[list(v.values) for v in slot] for slot in vectors]
    return RuleAnchors.from_slots(slots, counts, rule_id=rid)


#: upb's bytes of one AnchorVector of 32 floats inside the payload: the slot's tag,
#: the entry's length (134 - 3), the packed field's tag and length (128), the floats.
_VECTOR_BYTES = 3 + 3 + ANCHOR_DIM * 4
_VECTOR_HEADERS = [
    np.frombuffer(bytes([(2 * s + 1) << 3 | 2, 0x83, 0x01, 0x0A, 0x80, 0x01]), np.uint8)
    for s in range(4)
]


def _block_from_canonical(
    data: bytes, counts: tuple[int, ...], sent: tuple[int, ...]
) -> Float32Array | None:
    """The anchor block from upb's serialisation of a payload whose every vector has
    exactly 32 values: two ``np.frombuffer`` per slot instead of 32 Python floats per
    vector. upb writes fields in number order, repeated floats packed, unknown fields
    last; None when ``data`` is not laid out that way (the caller then converts
    vector by vector).
    """
    block = np.zeros(BLOCK_SHAPE, dtype=np.float32)
    raw = np.frombuffer(data, np.uint8)
    pos = 0
    for s in range(4):
        n, count = sent[s], counts[s]
        records = raw[pos : pos + n * _VECTOR_BYTES]
        if len(records) != n * _VECTOR_BYTES:
            return None
        records = records.reshape(n, _VECTOR_BYTES)
        if n and not (records[:, :6] == _VECTOR_HEADERS[s]).all():
            return None
        block[s, :n] = records[:, 6:].copy().view("<f4")
        pos += n * _VECTOR_BYTES
        if count:  # the count field: its tag and a one-byte varint (count <= 16)
            if data[pos : pos + 2] != bytes([(2 * s + 2) << 3, count]):
                return None
            pos += 2
    return block if pos == len(data) else None


def _param_from_upb(rid: str, key: str, value: Any) -> ParamScalar:
    which = value.WhichOneof("value")
    if which == "string_list":
        return tuple(value.string_list.values)
    if which in ("string_value", "int_value", "float_value", "bool_value"):
        inner: ParamScalar = getattr(value, which)
        return inner
    raise _param_unset(rid, key)


def _param_from_proto(rid: str, key: str, value: pb.ParamValue) -> ParamScalar:
    which, inner = betterproto2.which_one_of(value, "value")
    if which == "string_list":
        assert isinstance(inner, pb.StringList)
        return tuple(inner.values)
    if which in ("string_value", "int_value", "float_value", "bool_value"):
        assert isinstance(inner, str | int | float | bool)
        return inner
    raise _param_unset(rid, key)


def _param_unset(rid: str, key: str) -> RuleValidationError:
    return RuleValidationError(
        rid,
        f"params[{key!r}]",
        "value is not set (one of string_value, "
        "int_value, float_value, bool_value, string_list is required)",
    )


def _param_to_proto(value: ParamScalar) -> pb.ParamValue:
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return pb.ParamValue(bool_value=value)
    if isinstance(value, int):
        return pb.ParamValue(int_value=value)
    if isinstance(value, float):
        return pb.ParamValue(float_value=value)
    if isinstance(value, str):
        return pb.ParamValue(string_value=value)
    return pb.ParamValue(string_list=pb.StringList(values=list(value)))
