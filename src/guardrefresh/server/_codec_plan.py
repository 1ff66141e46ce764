"""Compiled plans: how each betterproto2 message type moves into upb and back.

A plan is made once per message type (and for every type it contains): per field a
writer (betterproto2 object -> upb message) and a reader (upb -> constructor keywords).
The bytes are exactly betterproto2's (tests/test_codec.py compares them): upb writes the
fields in field-number order; a message that contains a map, directly or deeper, is
written run by run, its map entries encoded here in the dict's insertion order with key
and value always present (upb would reorder them); unknown fields a parsed message
carried are written at its end. A type that cannot be compiled is left to betterproto2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import betterproto2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ._proto_fields import (
    SCALARS,
    MessageClass,
    Uncompilable,
    class_for,
    contains_map,
    is_map,
    is_repeated,
    tag,
    upb_class,
    varint,
)

__all__ = ["compiled_plan", "decode_message", "encode_message"]

_F = FieldDescriptor


class _Plan:
    """How to move one message type into and out of upb."""

    def __init__(self, cls: MessageClass) -> None:
        self.cls = cls
        self.upb = upb_class(cls)
        descriptor: Descriptor = cls.DESCRIPTOR
        self.fields = sorted(descriptor.fields, key=lambda f: f.number)
        self.has_map = False  # set by _plan() once every plan exists
        self.fill: Callable[[Any, Any], None] = self._fill
        self._writers: list[Callable[[Any, Any], None]] = []
        self._readers: list[Callable[[Any, dict[str, Any]], None]] = []
        self._runs: list[
            tuple[list[Callable[[Any, Any], None]], Callable[[Any], bytes] | None]
        ] = []

    # -- compiling -----------------------------------------------------------
    def compile(self) -> None:
        for field in self.fields:
            self._writers.append(self._writer(field))
            self._readers.append(self._reader(field))
        # Split into runs of fields upb writes in place, separated by fields written here.
        run: list[Callable[[Any, Any], None]] = []
        for field, writer in zip(self.fields, self._writers, strict=True):
            special = self._special_writer(field)
            if special is None:
                run.append(writer)
            else:
                self._runs.append((run, special))
                run = []
        self._runs.append((run, None))

    def _nested(self, field: FieldDescriptor) -> _Plan:
        return _plan(class_for(self.cls, field.message_type))

    def _writer(self, field: FieldDescriptor) -> Callable[[Any, Any], None]:
        name = field.name
        if is_map(field):
            return lambda msg, target: None  # written by _special_writer
        if field.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP):
            nested = self._nested(field)
            if is_repeated(field):

                def repeated_message(msg: Any, target: Any) -> None:
                    values = getattr(msg, name)
                    if values:
                        container = getattr(target, name)
                        fill = nested.fill
                        for value in values:
                            fill(value, container.add())

                return repeated_message

            def message(msg: Any, target: Any) -> None:
                value = getattr(msg, name)
                if value is not None:
                    sub = getattr(target, name)
                    sub.SetInParent()
                    nested.fill(value, sub)

            return message
        if is_repeated(field):

            def repeated_scalar(msg: Any, target: Any) -> None:
                values = getattr(msg, name)
                if values:
                    getattr(target, name).extend(values)

            return repeated_scalar
        if field.has_presence:  # proto3 optional or a oneof member: None means absent

            def present(msg: Any, target: Any) -> None:
                value = getattr(msg, name)
                if value is not None:
                    setattr(target, name, value)

            return present

        def implicit(msg: Any, target: Any) -> None:
            value = getattr(msg, name)
            # betterproto2 leaves out values equal to the default; upb would write -0.0.
            if value:
                setattr(target, name, value)

        return implicit

    def _special_writer(self, field: FieldDescriptor) -> Callable[[Any], bytes] | None:
        """For a field upb cannot write as betterproto2 does: its bytes, made here."""
        name = field.name
        if is_map(field):
            key_field, value_field = (
                field.message_type.fields_by_number[1],
                field.message_type.fields_by_number[2],
            )
            if key_field.type not in SCALARS:
                raise Uncompilable(field.full_name)
            key_wire, key_bytes = SCALARS[key_field.type]
            key_tag = tag(1, key_wire)
            if value_field.type == _F.TYPE_MESSAGE:
                nested = self._nested(value_field)
                value_tag = tag(2, 2)

                def value_bytes(value: Any) -> bytes:
                    body = nested.encode(value)
                    return value_tag + varint(len(body)) + body

            elif value_field.type in SCALARS:
                value_wire, write = SCALARS[value_field.type]
                scalar_tag = tag(2, value_wire)

                def value_bytes(value: Any) -> bytes:
                    return scalar_tag + write(value)

            else:
                raise Uncompilable(field.full_name)
            field_tag = tag(field.number, 2)

            def map_bytes(msg: Any) -> bytes:
                out = []
                for key, value in getattr(msg, name).items():
                    entry = key_tag + key_bytes(key) + value_bytes(value)
                    out.append(field_tag + varint(len(entry)) + entry)
                return b"".join(out)

            return map_bytes
        if field.type == _F.TYPE_MESSAGE and not is_map(field):
            nested = self._nested(field)
            if not nested.has_map:
                return None
            field_tag = tag(field.number, 2)

            def one(value: Any) -> bytes:
                body = nested.encode(value)
                return field_tag + varint(len(body)) + body

            if is_repeated(field):
                return lambda msg: b"".join(one(v) for v in getattr(msg, name))
            return lambda msg: b"" if (v := getattr(msg, name)) is None else one(v)
        return None

    def _reader(self, field: FieldDescriptor) -> Callable[[Any, dict[str, Any]], None]:
        name = field.name
        if is_map(field):
            value_field = field.message_type.fields_by_number[2]
            if value_field.type == _F.TYPE_MESSAGE:
                nested = self._nested(value_field)

                def message_map(source: Any, out: dict[str, Any]) -> None:
                    out[name] = {k: nested.read(v) for k, v in getattr(source, name).items()}

                return message_map

            def scalar_map(source: Any, out: dict[str, Any]) -> None:
                out[name] = dict(getattr(source, name))

            return scalar_map
        if field.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP):
            nested = self._nested(field)
            if is_repeated(field):

                def repeated_message(source: Any, out: dict[str, Any]) -> None:
                    read = nested.read
                    out[name] = [read(v) for v in getattr(source, name)]

                return repeated_message

            def message(source: Any, out: dict[str, Any]) -> None:
                out[name] = nested.read(getattr(source, name)) if source.HasField(name) else None

            return message
        if is_repeated(field):

            def repeated_scalar(source: Any, out: dict[str, Any]) -> None:
                out[name] = list(getattr(source, name))

            return repeated_scalar
        if field.has_presence:

            def present(source: Any, out: dict[str, Any]) -> None:
                out[name] = getattr(source, name) if source.HasField(name) else None

            return present

        def implicit(source: Any, out: dict[str, Any]) -> None:
            out[name] = getattr(source, name)

        return implicit

    # -- running -------------------------------------------------------------
    def _fill(self, msg: Any, target: Any) -> None:
        """Write ``msg`` into the upb message ``target`` (only for types without maps)."""
        for write in self._writers:
            write(msg, target)
        if msg._unknown_fields:
            target.MergeFromString(msg._unknown_fields)

    def encode(self, msg: Any) -> bytes:
        if not self.has_map:
            target = self.upb()
            self._fill(msg, target)
            data: bytes = target.SerializeToString()
            return data
        parts: list[bytes] = []
        for run, special in self._runs:
            if run:
                target = self.upb()
                for write in run:
                    write(msg, target)
                parts.append(target.SerializeToString())
            if special is not None:
                parts.append(special(msg))
        parts.append(msg._unknown_fields)
        return b"".join(parts)

    def read(self, source: Any) -> Any:
        values: dict[str, Any] = {}
        for read in self._readers:
            read(source, values)
        # What betterproto2's own construction ends with, without its per-field defaults work.
        obj = self.cls.__new__(self.cls)
        obj.__dict__.update(values)
        obj._unknown_fields = b""
        return obj

    def decode(self, data: bytes) -> Any:
        source = self.upb()
        source.ParseFromString(data)
        return self.read(source)


_PLANS: dict[MessageClass, _Plan] = {}


def _plan(cls: MessageClass) -> _Plan:
    """The compiled plan of ``cls`` (and of every type it contains), made once."""
    plan = _PLANS.get(cls)
    if plan is not None:
        return plan
    plan = _PLANS[cls] = _Plan(cls)
    try:
        plan.has_map = contains_map(cls.DESCRIPTOR, set())
        plan.compile()
    except Exception:
        del _PLANS[cls]
        raise
    return plan


_COMPILED: dict[MessageClass, _Plan | None] = {}


def compiled_plan(cls: MessageClass) -> _Plan | None:
    """The plan of ``cls``, or None for a type left to betterproto2 (decided once)."""
    try:
        return _COMPILED[cls]
    except KeyError:
        pass
    try:
        plan: _Plan | None = _plan(cls)
    except Uncompilable:
        plan = None
    _COMPILED[cls] = plan
    return plan


def encode_message(message: betterproto2.Message) -> bytes:
    """The wire bytes of ``message``: betterproto2's bytes, made in C."""
    plan = compiled_plan(type(message))
    return plan.encode(message) if plan is not None else bytes(message)


def decode_message(data: bytes, cls: MessageClass) -> Any:
    """Parse ``data`` as ``cls`` (in C). Raises ``google.protobuf.message.DecodeError``."""
    plan = compiled_plan(cls)
    return plan.decode(data) if plan is not None else cls.parse(data)
