from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeAlias

import attrs
import numpy as np

from ._anchors import RuleAnchors
from ._errors import RuleValidationError
from ._text import echo, escape_controls

#: A parameter value, as carried by the wire's ``ParamValue`` oneof.
ParamScalar: TypeAlias = str | int | float | bool | tuple[str, ...]

MAX_RULE_ID_CHARS = 256
MAX_NAME_CHARS = 128
MAX_PARAM_KEY_CHARS = 128
MAX_PARAMS = 256
#: Upper bound on params + modification_spec of one rule, as UTF-8 bytes.
MAX_EXTRAS_BYTES = 64 * 1024
#: Deepest nesting of arrays and objects in a JSON value a client sends (modification_spec).
MAX_JSON_DEPTH = 64
#: Family ids one RefreshRules may name; each is a family id as rules carry it.
MAX_REFRESH_FAMILIES = 1000
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class PolicyType(enum.Enum):
    """What a matching rule does. Stored by value, never defaulted."""

    FORBIDDEN = "forbidden"
    CONTEXT_ALLOW = "context_allow"
    CONTEXT_DENY = "context_deny"
    CONTEXT_DEFER = "context_defer"

    @classmethod
    def parse(cls, value: str, *, rule_id: str = "") -> PolicyType:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(p.value for p in cls)
            raise RuleValidationError(
                rule_id, "policy_type", f"unknown policy type {echo(value)} (allowed: {allowed})"
            ) from None


#: Stable small codes for the columnar store; never renumber.
POLICY_CODES: dict[PolicyType, int] = {
    PolicyType.FORBIDDEN: 1,
    PolicyType.CONTEXT_ALLOW: 2,
    PolicyType.CONTEXT_DENY: 3,
    PolicyType.CONTEXT_DEFER: 4,
}
POLICY_BY_CODE: dict[int, PolicyType] = {code: p for p, code in POLICY_CODES.items()}


def _f32(value: float) -> float:
    # The wire carries these as proto `float`: keep exactly what float32 can hold.
    # Out of float32 range gives inf, which validate() rejects; no RuntimeWarning.
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _frozen_params(value: Mapping[str, ParamScalar]) -> Mapping[str, ParamScalar]:
    if isinstance(value, MappingProxyType):
        return value
    return MappingProxyType({k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def _frozen_weights(value: Any) -> tuple[float, ...]:
    return tuple(_f32(v) for v in value)


@attrs.frozen(kw_only=True)
class Rule:
    """One installed rule, with every field of the wire's ``RuleInstance``.

    Instances are immutable. Construction does not validate (a rule read back
    from verified storage needs no second check); call :meth:`validate`, or
    build from the wire with :func:`rule_from_proto`, at trust boundaries.

    ``installed_by``, ``config_id`` and ``owner`` record which InstallRules
    call stored the rule; they are not part of ``RuleInstance``.
    """

    rule_id: str
    family_id: str = ""
    layer: str = ""
    agent_id: str = ""
    priority: int = 0
    enabled: bool = True
    created_at_ms: int = 0
    params: Mapping[str, ParamScalar] = attrs.field(
        factory=dict,
        converter=_frozen_params,
        eq=attrs.cmp_using(eq=lambda a, b: dict(a) == dict(b) and _same_types(a, b)),
    )
    anchors: RuleAnchors = attrs.field(factory=RuleAnchors.empty)
    policy_type: PolicyType = PolicyType.FORBIDDEN
    drift_threshold: float = attrs.field(default=0.0, converter=_f32)
    modification_spec: str = ""
    slice_weights: tuple[float, ...] = attrs.field(default=(), converter=_frozen_weights)
    installed_by: str = ""
    config_id: str = ""
    owner: str = ""

    @property
    def is_global(self) -> bool:
        """A rule with no agent applies to every agent."""
        return not self.agent_id

    def validate(self) -> None:
        """Raise :class:`RuleValidationError` on the first invalid field."""
        rid = self.rule_id
        if not rid:
            raise RuleValidationError(rid, "rule_id", "must not be empty")
        _check_text(rid, "rule_id", rid, MAX_RULE_ID_CHARS)
        for name in ("family_id", "layer", "agent_id", "installed_by", "config_id", "owner"):
            _check_text(rid, name, getattr(self, name), MAX_NAME_CHARS)
        _check_int(rid, "priority", self.priority, INT32)
        _check_int(rid, "created_at_ms", self.created_at_ms, INT64)
        if not isinstance(self.enabled, bool):
            raise RuleValidationError(rid, "enabled", "must be a bool")
        if not isinstance(self.policy_type, PolicyType):
            raise RuleValidationError(
                rid, "policy_type", f"must be a PolicyType, got {self.policy_type!r}"
            )
        if not math.isfinite(self.drift_threshold) or self.drift_threshold < 0:
            raise RuleValidationError(
                rid, "drift_threshold", f"must be finite and >= 0, got {self.drift_threshold}"
            )
        if len(self.slice_weights) not in (0, 4):
            raise RuleValidationError(
                rid, "slice_weights", f"must be 4 values or empty, got {len(self.slice_weights)}"
            )
        if not all(math.isfinite(w) for w in self.slice_weights):
            raise RuleValidationError(rid, "slice_weights", "values must be finite (no NaN or inf)")
        _check_params(rid, self.params)
        # Lone surrogates would pass json.loads yet fail when the rule is stored.
        _check_text(rid, "modification_spec", self.modification_spec, MAX_EXTRAS_BYTES)
        if self.modification_spec:
            # Before parsing: json.loads recurses once per level and a few hundred
            # levels end in RecursionError.
            depth = json_depth(self.modification_spec)
            if depth > MAX_JSON_DEPTH:
                raise RuleValidationError(
                    rid,
                    "modification_spec",
                    f"JSON nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}",
                )
            try:
                json.loads(self.modification_spec, parse_constant=_reject_non_json_constant)
            except ValueError as exc:
                raise RuleValidationError(
                    rid, "modification_spec", f"must be JSON: {exc}"
                ) from None
        extras = len(self.modification_spec.encode("utf-8", "surrogatepass")) + _params_size(
            self.params
        )
        if extras > MAX_EXTRAS_BYTES:
            raise RuleValidationError(
                rid,
                "params",
                f"params and modification_spec exceed {MAX_EXTRAS_BYTES} bytes ({extras})",
            )
        self.anchors.validate(rid)


def _reject_non_json_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) and the spec's consumers do not.
    raise ValueError(f"{name} is not valid JSON")


def _same_types(a: Mapping[str, ParamScalar], b: Mapping[str, ParamScalar]) -> bool:
    # 1 == 1.0 == True in Python; a rule that says 1.0 must not compare equal to one that says 1.
    return all(type(a[k]) is type(b[k]) for k in a)


def _check_text(rid: str, field: str, value: object, limit: int) -> None:
    if not isinstance(value, str):
        raise RuleValidationError(rid, field, f"must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise RuleValidationError(rid, field, f"at most {limit} characters, got {len(value)}")
    if "\x00" in value:
        raise RuleValidationError(rid, field, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RuleValidationError(
            rid, field, "must be valid Unicode (no lone surrogates)"
        ) from None


def _check_int(rid: str, field: str, value: object, bounds: tuple[int, int]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleValidationError(rid, field, f"must be an integer, got {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:
        raise RuleValidationError(rid, field, f"must be in {bounds[0]}..{bounds[1]}, got {value}")


def _check_params(rid: str, params: Mapping[str, ParamScalar]) -> None:
    if len(params) > MAX_PARAMS:
        raise RuleValidationError(rid, "params", f"at most {MAX_PARAMS} entries, got {len(params)}")
    for key, value in params.items():
        field = f"params[{echo(key)}]"
        if not key:
            raise RuleValidationError(rid, "params", "keys must not be empty")
        _check_text(rid, field, key, MAX_PARAM_KEY_CHARS)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            _check_int(rid, field, value, INT64)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise RuleValidationError(rid, field, "must be finite (no NaN or inf)")
        elif isinstance(value, str):
            _check_text(rid, field, value, MAX_EXTRAS_BYTES)
        elif isinstance(value, tuple):
            for item in value:
                _check_text(rid, field, item, MAX_EXTRAS_BYTES)
        else:
            raise RuleValidationError(rid, field, f"unsupported value type {type(value).__name__}")


def _params_size(params: Mapping[str, ParamScalar]) -> int:
    size = 0
    for key, value in params.items():
        size += len(key.encode("utf-8", "surrogatepass")) + 8
        if isinstance(value, str):
            size += len(value.encode("utf-8", "surrogatepass"))
        elif isinstance(value, tuple):
            size += sum(len(v.encode("utf-8", "surrogatepass")) + 4 for v in value)
    return size


# A JSON string, escapes included: brackets inside one do not nest anything.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Bytes of what is left: an opening bracket is +1, a closing one -1 (as int8), the rest
# is dropped (UTF-8 bytes of other characters are all >= 0x80: never a bracket).
_DEPTH_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON ``text`` (``1`` is 0 levels,
    ``[[1]]`` 2), counted without parsing it; brackets inside strings do not count.

    Linear and recursion-free (a 64 KiB spec takes well under 2 ms).
    """
    outside = _JSON_STRING.sub("", text).encode("utf-8", "surrogatepass")
    steps = np.frombuffer(outside.translate(_DEPTH_STEPS, _NOT_BRACKETS), dtype=np.int8)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def check_family_ids(values: Sequence[object]) -> list[str]:
    """Validate the family ids of a RefreshRules request; returns them as strings.

    Each must be a non-empty string of at most ``MAX_NAME_CHARS`` characters (the
    limit of a rule's ``family_id``) with no control character; at most
    :data:`MAX_REFRESH_FAMILIES` of them. Raises :class:`ValueError` naming the
    first bad one (shortened, see :func:`echo`).
    """
    if len(values) > MAX_REFRESH_FAMILIES:
        raise ValueError(
            f"family_ids: at most {MAX_REFRESH_FAMILIES} family ids, got {len(values)}"
        )
    families: list[str] = []
    for index, value in enumerate(values):
        where = f"family_ids[{index}]"
        if not isinstance(value, str):
            # betterproto2 decodes a string sent with another wire type as an int.
            raise ValueError(f"{where}: must be a string, got {type(value).__name__}")
        if not value:
            raise ValueError(f"{where}: must not be empty")
        if len(value) > MAX_NAME_CHARS:
            raise ValueError(
                f"{where}: at most {MAX_NAME_CHARS} characters, got {len(value)}: {echo(value)}"
            )
        if escape_controls(value) != value:
            raise ValueError(
                f"{where}: must not contain NUL or other control characters: {echo(value)}"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: must be valid Unicode (no lone surrogates)") from None
        families.append(value)
    return families
