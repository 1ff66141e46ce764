"""Decoding an InstallRules request: :func:`parse_install_request`.

A request of 100 rules with full anchor slots is about 850 KB of packed floats:
betterproto2 parses it field by field in Python (about 240 ms here); protobuf's C
runtime (upb, the class :func:`upb_class` builds from the embedded descriptors)
parses it in well under a millisecond, and the rules are built straight from that
message (:func:`guardrefresh.model.rule_from_upb`), with the same validation and
errors as from betterproto2's objects.

One thing upb does not keep is the order of map entries, and a rule's ``params``
keep the order they were sent in (GetRule answers them so; the stored record and
its digest follow it). :func:`param_orders` reads those keys' order from the
request's bytes: a walk over the fields of each rule, skipping the anchors whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
from grpclib import GRPCError, Status

from ..model import Rule, rule_from_proto, rule_from_upb
from ..proto import rule_installation as pb
from ._proto_fields import upb_class

__all__ = ["InstallRequest", "param_orders", "parse_install_request"]

_REQUEST_RULES = 2  # InstallRulesRequest.rules
_RULE_PARAMS = 8  # RuleInstance.params
_ENTRY_KEY = 1  # the key of a map entry


@attrs.frozen
class InstallRequest:
    """A decoded, validated InstallRules request."""

    agent_id: str
    config_id: str
    owner: str
    rules: list[Rule]


class _Unexpected(Exception):
    """Bytes the walk does not follow (e.g. groups); the slow path decides."""


def parse_install_request(data: bytes) -> InstallRequest:
    """Decode and validate an InstallRules request (CPU work: run it in a worker thread).

    Raises ``GRPCError(INVALID_ARGUMENT)`` for bytes that are not an
    InstallRulesRequest and :class:`~guardrefresh.model.RuleValidationError` for
    the first invalid rule.
    """
    try:
        message = upb_class(pb.InstallRulesRequest).FromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed InstallRulesRequest: {exc}") from None
    upb_rules = message.rules
    try:
        orders = (
            param_orders(data)
            if any(len(r.params) > 1 for r in upb_rules)
            else [None] * len(upb_rules)
        )
    except _Unexpected:
        return _parse_slowly(data)
    if len(orders) != len(upb_rules):  # pragma: no cover - both read the same bytes
        return _parse_slowly(data)
    provenance = {
        "installed_by": message.agent_id,
        "config_id": message.config_id,
        "owner": message.owner,
    }
    rules = []
    for r, keys in zip(upb_rules, orders, strict=True):
        if keys is not None and len(keys) != len(r.params):  # pragma: no cover - as above
            return _parse_slowly(data)
        rules.append(rule_from_upb(r, param_keys=keys, **provenance))
    return InstallRequest(message.agent_id, message.config_id, message.owner, rules)


def _parse_slowly(data: bytes) -> InstallRequest:
    """betterproto2's parse, for requests the walk does not follow."""
    try:
        message = pb.InstallRulesRequest.parse(data)
    except Exception as exc:  # betterproto2 raises assorted errors on malformed bytes
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed InstallRulesRequest: {exc}") from None
    rules = []
    for index, r in enumerate(message.rules):
        try:
            rule = rule_from_proto(
                r, installed_by=message.agent_id, config_id=message.config_id, owner=message.owner
            )
        except (AttributeError, TypeError) as exc:
            # betterproto2 decodes a field sent with another wire type as an int or None
            # rather than failing: malformed input, not a bug to log with a traceback.
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"malformed InstallRulesRequest: rules[{index}]: {exc}"
            ) from None
        rules.append(rule)
    return InstallRequest(message.agent_id, message.config_id, message.owner, rules)


# -- the walk ------------------------------------------------------------------------


def param_orders(data: bytes) -> list[list[str] | None]:
    """For each rule of the InstallRulesRequest ``data``, its params keys in wire order.

    Each key once, where it first appears (a repeated key keeps its first place and
    its last value, as betterproto2 and Python dicts do); None for a rule without
    params. ``data`` must have parsed as a request already (upb checked lengths and
    UTF-8); raises :class:`_Unexpected` for what this walk does not follow.
    """
    view = memoryview(data)
    orders: list[list[str] | None] = []
    for number, start, end in _fields(view, 0, len(view)):
        if number != _REQUEST_RULES:
            continue
        keys: dict[str, None] = {}
        for field, entry_start, entry_end in _fields(view, start, end):
            if field == _RULE_PARAMS:
                key = ""  # an entry without a key has the empty key
                for inner, key_start, key_end in _fields(view, entry_start, entry_end):
                    if inner == _ENTRY_KEY:
                        key = str(view[key_start:key_end], "utf-8")
                keys.setdefault(key)
        orders.append(list(keys) if keys else None)
    return orders


def _fields(view: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field in ``view[pos:end]``;
    other fields are skipped."""
    while pos < end:
        tag, pos = _varint(view, pos)
        wire = tag & 7
        if wire == 2:
            length, pos = _varint(view, pos)
            if pos + length > end:
                raise _Unexpected("length past the end")
            yield tag >> 3, pos, pos + length
            pos += length
        elif wire == 0:
            _, pos = _varint(view, pos)
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise _Unexpected(f"wire type {wire}")
    if pos != end:
        raise _Unexpected("field past the end")


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise _Unexpected("bad varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
