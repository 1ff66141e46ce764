"""The intent of an Enforce request: ``intent_event_json`` parsed and checked.

The JSON is the Guard IntentEvent v1.3 the original data plane read (its
``api_types.rs``): camelCase ``schemaVersion`` and ``tenantId``, snake_case for the
rest. The same fields are required as there (``id``, ``schemaVersion``, ``tenantId``,
``timestamp``, ``actor``, ``action``, ``resource``, ``data``, ``risk``), with the same
types; optional ones may be absent or ``null``; unknown keys are ignored. What the
original accepted is accepted here, and what it refused is refused, but as
:class:`IntentError` (the service answers INVALID_ARGUMENT) rather than INTERNAL.

Beyond the original: NaN and Infinity literals are refused (JSON has neither), and
nesting deeper than :data:`MAX_DEPTH` is refused, so no later walk of the free-form
``context`` or ``tool_params`` (telemetry, logs) can be made to recurse without bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = ["MAX_DEPTH", "Intent", "IntentError", "PartialIntent", "parse_intent"]

#: Deepest nesting of arrays and objects accepted anywhere in the intent.
MAX_DEPTH: Final = 64
_I32 = (-(2**31), 2**31 - 1)


class IntentError(ValueError):
    """``intent_event_json`` is not a usable IntentEvent; ``str()`` says what is wrong.

    ``partial`` is what could still be read of it (for the record of the refused
    request), set by :func:`parse_intent`; None when raised elsewhere.
    """

    def __init__(self, message: str, *, partial: PartialIntent | None = None) -> None:
        super().__init__(message)
        self.partial = partial


@attrs.frozen(kw_only=True)
class PartialIntent:
    """What could be read of an ``intent_event_json`` that is not a valid IntentEvent.

    Best effort, for telemetry of a refused request: each field is taken from the JSON
    object when it is there with the right type, else left empty. Has the attributes of
    :class:`Intent` that a record of a request reads (``raw``, ``tenant_id``,
    ``agent_id``, ``layer``, ``action``, ``tool_name``).
    """

    raw: str = attrs.field(default="", repr=False)
    tenant_id: str = ""
    agent_id: str = ""
    layer: str | None = None
    action: str = ""
    tool_name: str | None = None

    @classmethod
    def of(cls, raw: str, document: object = None) -> PartialIntent:
        """The fields of ``document`` (the parsed ``raw``; anything but a JSON object
        gives only ``raw``). Reads top-level keys and one level below: never recurses."""
        if not isinstance(document, dict):
            return cls(raw=raw)

        def text(obj: object, key: str) -> str:
            value = obj.get(key) if isinstance(obj, dict) else None
            return value if isinstance(value, str) else ""

        context = document.get("rate_limit_context")
        agent = (
            text(context, "agent_id")
            or text(context, "agentId")
            or text(document.get("actor"), "id")
        )
        return cls(
            raw=raw,
            tenant_id=text(document, "tenantId"),
            agent_id=agent,
            layer=text(document, "layer") or None,
            action=text(document, "action"),
            tool_name=text(document, "tool_name") or None,
        )


@attrs.frozen(kw_only=True)
class Intent:
    """An IntentEvent v1.3, the fields the data plane uses and records.

    ``raw`` is the JSON text exactly as received: it is what the management plane's
    encoder is sent and what telemetry keeps. ``layer`` is None when absent, null or
    empty (the original treats all three as "every layer").
    """

    raw: str = attrs.field(repr=False)
    id: str
    schema_version: str
    tenant_id: str
    timestamp: float
    actor_id: str
    actor_type: str
    action: str
    resource_type: str
    resource_name: str | None = None
    resource_location: str | None = None
    data_sensitivity: tuple[str, ...] = ()
    data_pii: bool | None = None
    data_volume: str | None = None
    risk_authn: str
    layer: str | None = None
    tool_name: str | None = None
    tool_method: str | None = None
    #: ``rate_limit_context.agent_id``; None without a rate limit context.
    rate_limit_agent_id: str | None = None
    rate_limit_window_start: float | None = None
    rate_limit_call_count: int | None = None

    @property
    def agent_id(self) -> str:
        """The agent behind the intent: ``rate_limit_context.agent_id`` (what the original
        recorded), else ``actor.id`` (what the management plane fills in)."""
        return self.rate_limit_agent_id if self.rate_limit_agent_id else self.actor_id


def parse_intent(text: str) -> Intent:
    """Parse and check ``intent_event_json``; :class:`IntentError` names the problem.

    Pure and synchronous: a caller on an event loop should run large inputs in a
    worker thread. Never raises anything but :class:`IntentError`.
    """
    if not isinstance(text, str):
        raise IntentError("intent_event_json must be a string", partial=PartialIntent())
    unparsed = PartialIntent(raw=text)
    if not text.strip():
        raise IntentError(
            "intent_event_json is empty; it must hold an IntentEvent JSON object",
            partial=unparsed,
        )
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise IntentError(f"intent_event_json is not valid JSON: {exc}", partial=unparsed) from None
    except RecursionError:
        raise IntentError(
            f"intent_event_json nests deeper than {MAX_DEPTH} levels", partial=unparsed
        ) from None
    except ValueError as exc:  # from _refuse_constant
        raise IntentError(f"intent_event_json: {exc}", partial=unparsed) from None
    try:
        _check_depth(document)
        if not isinstance(document, dict):
            raise IntentError(
                f"intent_event_json must be a JSON object, got {_type_name(document)}"
            )
        return _intent(text, document)
    except IntentError as exc:
        # Only on the way out of a refusal: what the record of it can still name.
        exc.partial = PartialIntent.of(text, document)
        raise


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_depth(document: Any) -> None:
    # Iterative: the check itself must not be the deep recursion it prevents.
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise IntentError(f"intent_event_json nests deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class _Fields:
    """Typed access to one JSON object, with the dotted path for messages."""

    def __init__(self, obj: Mapping[str, Any], path: str) -> None:
        self._obj = obj
        self._path = path

    def _name(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str, required: bool) -> Any:
        if key not in self._obj:
            if required:
                raise IntentError(f"intent_event_json: missing field {self._name(key)!r}")
            return None
        value = self._obj[key]
        if value is None and required:
            raise IntentError(f"intent_event_json: field {self._name(key)!r} must not be null")
        return value

    def _wrong(self, key: str, wanted: str, value: Any) -> IntentError:
        return IntentError(
            f"intent_event_json: field {self._name(key)!r} must be {wanted}, "
            f"got {_type_name(value)}"
        )

    def optional_text(self, key: str) -> str | None:
        value = self._get(key, False)
        if value is not None and not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def text(self, key: str) -> str:
        value = self._get(key, True)
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def number(self, key: str, *, required: bool = True) -> float | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(key, "a number", value)
        return float(value) if isinstance(value, float) else _int_as_float(value, self._name(key))

    def integer(self, key: str, *, required: bool = True) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        if not _I32[0] <= value <= _I32[1]:
            raise IntentError(
                f"intent_event_json: field {self._name(key)!r} is out of range (32-bit integer)"
            )
        return value

    def boolean(self, key: str, *, required: bool = True) -> bool | None:
        value = self._get(key, required)
        if value is not None and not isinstance(value, bool):
            raise self._wrong(key, "a boolean", value)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, True)
        if not isinstance(value, list):
            raise self._wrong(key, "an array of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise IntentError(
                    f"intent_event_json: field {self._name(key)}[{index}] must be a string, "
                    f"got {_type_name(item)}"
                )
        return tuple(value)

    def object(self, key: str, *, required: bool = True) -> _Fields | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._wrong(key, "an object", value)
        return _Fields(value, self._name(key))


def _int_as_float(value: int, name: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isinf(number):
        raise IntentError(f"intent_event_json: field {name!r} is out of range")
    return number


def _required(value: float | None) -> float:
    assert value is not None  # number() raises for a missing required field
    return value


def _intent(raw: str, document: dict[str, Any]) -> Intent:
    # Checked in the schema's field order, so the first problem reported is predictable.
    top = _Fields(document, "")
    fields: dict[str, Any] = {
        "id": top.text("id"),
        "schema_version": top.text("schemaVersion"),
        "tenant_id": top.text("tenantId"),
        "timestamp": _required(top.number("timestamp")),
    }
    actor = _present(top.object("actor"))
    fields.update(actor_id=actor.text("id"), actor_type=actor.text("type"))
    fields["action"] = top.text("action")
    resource = _present(top.object("resource"))
    fields.update(
        resource_type=resource.text("type"),
        resource_name=resource.optional_text("name"),
        resource_location=resource.optional_text("location"),
    )
    data = _present(top.object("data"))
    fields.update(
        data_sensitivity=data.strings("sensitivity"),
        data_pii=data.boolean("pii", required=False),
        data_volume=data.optional_text("volume"),
    )
    fields["risk_authn"] = _present(top.object("risk")).text("authn")
    # context and tool_params are free-form (serde_json::Value in the original): any
    # JSON, checked only for depth, kept in ``raw``.
    fields.update(
        layer=top.optional_text("layer") or None,
        tool_name=top.optional_text("tool_name"),
        tool_method=top.optional_text("tool_method"),
    )
    rate = top.object("rate_limit_context", required=False)
    if rate is not None:
        fields.update(
            rate_limit_agent_id=rate.text("agent_id"),
            rate_limit_window_start=rate.number("window_start"),
            rate_limit_call_count=rate.integer("call_count"),
        )
    return Intent(raw=raw, **fields)


def _present(fields: _Fields | None) -> _Fields:
    assert fields is not None  # object() raises for a missing required field
    return fields
