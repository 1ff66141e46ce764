"""Reading the rules JSON file: what operators write, ``install`` sends and ``warm export`` writes.

The format is documented in ``docs/rules-json.md``. In short::

    {"agent_id": "...", "config_id": "...", "owner": "...",
     "rules": [{"rule_id": "...", "policy_type": "forbidden", ...,
                "anchors": {"action": [[32 numbers], ...], "resource": [...], ...,
                            "action_count": 1}}]}

The top-level ``agent_id``, ``config_id`` and ``owner`` say who installs the rules
(``Rule.installed_by``, ``.config_id``, ``.owner``); a rule may override them with its
own ``installed_by``, ``config_id`` and ``owner`` keys, which is how an export of a
store holding several agents' rules stays exact.

Reading validates everything and names the rule and the JSON field at fault. Writing
(``_json_write``) round-trips exactly: every float32 (anchors, ``drift_threshold``, ``slice_weights``)
is written with the fewest digits that read back as the same float32, params keep
their JSON type (``1`` stays an int, ``1.0`` a float), and a ``modification_spec``
is written as an object only when reading the object back reproduces its text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ._anchors import SLOTS, RuleAnchors
from ._errors import RuleValidationError
from ._rule import MAX_JSON_DEPTH, ParamScalar, PolicyType, Rule
from ._text import echo

__all__ = ["COUNT_KEYS", "INSTALL_FIELDS", "compact_json", "rules_from_json"]

_DOCUMENT_KEYS = ("agent_id", "config_id", "owner", "rules")
_RULE_KEYS = (
    "rule_id",
    "family_id",
    "layer",
    "agent_id",
    "priority",
    "enabled",
    "created_at_ms",
    "policy_type",
    "drift_threshold",
    "modification_spec",
    "slice_weights",
    "params",
    "anchors",
    "installed_by",
    "config_id",
    "owner",
)
#: Who installed a rule: the document's key, the rule's own key and the Rule attribute.
INSTALL_FIELDS = (("agent_id", "installed_by"), ("config_id", "config_id"), ("owner", "owner"))
#: Optional keys of the anchors object: how many of a slot's vectors are scored anchors.
COUNT_KEYS = tuple(f"{slot}_count" for slot in SLOTS)


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; in a rules file that hides a typo.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(f"duplicate key {echo(key)} in an object")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def rules_from_json(document: str | bytes) -> list[Rule]:
    """Parse and validate a rules JSON document; returns its rules in file order.

    Each rule's ``installed_by``, ``config_id`` and ``owner`` come from its own keys
    or else from the document's ``agent_id``, ``config_id`` and ``owner``. Raises
    :class:`RuleValidationError` (a :class:`ValueError`) naming the rule and the
    JSON field when a rule is at fault, and a plain :class:`ValueError` when the
    document itself is (not JSON, unknown key, a rule that is not an object ...).
    """
    try:
        doc = json.loads(document, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except _DuplicateKeyError as exc:
        raise ValueError(f"{exc}") from None
    except RecursionError:
        # A value in a rule may nest at most MAX_JSON_DEPTH levels (modification_spec);
        # this is far deeper than that, and Python's parser gave up.
        raise ValueError(
            f"not valid JSON: nested too deeply (a modification_spec may nest at most "
            f"{MAX_JSON_DEPTH} levels)"
        ) from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"the top level must be an object, got {_kind(doc)}")
    _check_keys(doc, _DOCUMENT_KEYS, "the top level")
    if "rules" not in doc:
        raise ValueError('the top level has no "rules" list')
    defaults = {key: _top_level_text(doc, key) for key in ("agent_id", "config_id", "owner")}
    items = doc["rules"]
    if not isinstance(items, list):
        raise ValueError(f'"rules" must be a list, got {_kind(items)}')
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        rule = _rule_from_object(item, index, defaults)
        first = seen.setdefault(rule.rule_id, index)
        if first != index:
            raise RuleValidationError(
                rule.rule_id, "rule_id", f"appears twice (rules[{first}] and rules[{index}])"
            )
        rules.append(rule)
    return rules


def _kind(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _check_keys(obj: dict[str, Any], known: Sequence[str], where: str, rid: str = "") -> None:
    for key in obj:
        if key not in known:
            problem = f"unknown key (known keys: {', '.join(known)})"
            if rid:
                raise RuleValidationError(rid, key, problem)
            raise ValueError(f"{where}: {echo(key)}: {problem}")


def _top_level_text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"top-level {key!r} must be a string, got {_kind(value)}")
    return value


class _RuleReader:
    """Typed access to one rule object; every problem names the rule and the field."""

    def __init__(self, obj: dict[str, Any], rid: str) -> None:
        self.obj = obj
        self.rid = rid

    def fail(self, field: str, problem: str) -> RuleValidationError:
        return RuleValidationError(self.rid, field, problem)

    def text(self, key: str, default: str = "") -> str:
        value = self.obj.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {_kind(value)}")
        return value

    def integer(self, key: str, default: int) -> int:
        value = self.obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {_kind(value)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.obj.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_kind(value)}")
        return value

    def number(self, field: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(field, f"must be a number, got {_kind(value)}")
        try:
            return float(value)
        except OverflowError:
            raise self.fail(field, "number out of range") from None

    def numbers(self, field: str, value: object) -> list[float]:
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list of numbers, got {_kind(value)}")
        # type() rather than isinstance(): bool is an int subclass and is not a number here.
        if all(type(v) is float for v in value):
            return value
        return [self.number(f"{field}[{i}]", v) for i, v in enumerate(value)]


def _rule_from_object(obj: object, index: int, defaults: dict[str, str]) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object, got {_kind(obj)}")
    rid = obj.get("rule_id")
    if not isinstance(rid, str) or not rid:
        got = "is missing" if rid is None else f"must be a non-empty string, got {echo(rid)}"
        raise ValueError(f"{where}: rule_id {got}")
    _check_keys(obj, _RULE_KEYS, where, rid)
    r = _RuleReader(obj, rid)
    if "policy_type" not in obj:
        allowed = ", ".join(p.value for p in PolicyType)
        raise r.fail("policy_type", f"is required (one of {allowed})")
    rule = Rule(
        rule_id=rid,
        family_id=r.text("family_id"),
        layer=r.text("layer"),
        agent_id=r.text("agent_id"),
        priority=r.integer("priority", 0),
        enabled=r.boolean("enabled", True),
        created_at_ms=r.integer("created_at_ms", 0),
        params=_params(r),
        anchors=_anchors(r),
        policy_type=PolicyType.parse(r.text("policy_type"), rule_id=rid),
        drift_threshold=r.number("drift_threshold", obj.get("drift_threshold", 0.0)),
        modification_spec=_modification_spec(r),
        slice_weights=r.numbers("slice_weights", obj.get("slice_weights", [])),
        installed_by=r.text("installed_by", defaults["agent_id"]),
        config_id=r.text("config_id", defaults["config_id"]),
        owner=r.text("owner", defaults["owner"]),
    )
    rule.validate()
    return rule


def _params(r: _RuleReader) -> dict[str, ParamScalar]:
    raw = r.obj.get("params", {})
    if not isinstance(raw, dict):
        raise r.fail("params", f"must be an object, got {_kind(raw)}")
    params: dict[str, ParamScalar] = {}
    for key, value in raw.items():
        if isinstance(value, str | bool | int | float):
            params[key] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            params[key] = tuple(value)
        else:
            raise r.fail(
                f"params[{echo(key)}]",
                "must be a string, an integer, a number, true/false or a list of strings, "
                f"got {_kind(value) if not isinstance(value, list) else 'a list with non-strings'}",
            )
    return params


def _anchors(r: _RuleReader) -> RuleAnchors:
    raw = r.obj.get("anchors", {})
    if not isinstance(raw, dict):
        raise r.fail("anchors", f"must be an object, got {_kind(raw)}")
    for key in raw:
        if key not in SLOTS and key not in COUNT_KEYS:
            known = ", ".join((*SLOTS, *COUNT_KEYS))
            raise r.fail(f"anchors.{key}", f"unknown key (known keys: {known})")
    slots: list[list[list[float]]] = []
    counts: list[int] = []
    for name, count_key in zip(SLOTS, COUNT_KEYS, strict=True):
        vectors = raw.get(name, [])
        if not isinstance(vectors, list):
            raise r.fail(f"anchors.{name}", f"must be a list of vectors, got {_kind(vectors)}")
        slots.append([r.numbers(f"anchors.{name}[{i}]", v) for i, v in enumerate(vectors)])
        count = raw.get(count_key, len(vectors))
        if isinstance(count, bool) or not isinstance(count, int):
            raise r.fail(f"anchors.{count_key}", f"must be an integer, got {_kind(count)}")
        counts.append(count)
    try:
        return RuleAnchors.from_slots(slots, counts, rule_id=r.rid)
    except RuleValidationError as exc:
        # The model names wire fields ("anchors.action_anchors[0]"); name the JSON ones.
        field = re.sub(r"^anchors\.(\w+)_anchors", r"anchors.\1", exc.field)
        raise r.fail(field, exc.problem) from None


def _modification_spec(r: _RuleReader) -> str:
    value = r.obj.get("modification_spec", "")
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return compact_json(value)
    raise r.fail("modification_spec", f"must be an object or a string, got {_kind(value)}")


def compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
