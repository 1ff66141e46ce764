"""Compiled protobuf encoding and decoding for the betterproto2 messages.

betterproto2 encodes and parses field by field in pure Python: one
EnforceResponse with 1,000 evidence entries takes tens of milliseconds on the
event loop. The generated code embeds the ``.proto`` descriptors, from which
``google.protobuf`` builds message classes backed by its C runtime (upb). This
module moves betterproto2 objects into such messages and back, so the bytes
are produced and parsed in C while handlers keep the typed betterproto2 API.

The bytes are exactly betterproto2's (a property test compares them):

- fields in field-number order, default values of implicit-presence fields
  left out (for float and double, ``-0.0`` too, as betterproto2 does);
- map entries in the dict's insertion order, key and value always written
  (upb would reorder them): messages that contain a map, directly or deeper,
  are written run by run, the map fields between runs encoded here;
- unknown fields a parsed message carried are written at its end.

Decoding gives the objects betterproto2's parser would give, except that
unknown fields are dropped (no handler uses them). A message type this module
cannot compile (none in this package) falls back to betterproto2.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

import betterproto2
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpclib import GRPCError, Status
from grpclib.encoding.proto import ProtoCodec

__all__ = ["CompiledProtoCodec", "decode_message", "encode_message", "upb_class"]

_F = FieldDescriptor
#: A generated betterproto2 message class (betterproto2 is not type-checked here).
_MessageClass = Any


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64: ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _zigzag(bits: int) -> Callable[[int], bytes]:
    return lambda v: _varint((v << 1) ^ (v >> (bits - 1)))


def _packer(fmt: str) -> Callable[[Any], bytes]:
    return struct.Struct(fmt).pack


#: Scalar writers for map keys and values: (wire type, value -> bytes without the tag).
_SCALARS: dict[int, tuple[int, Callable[[Any], bytes]]] = {
    _F.TYPE_STRING: (2, lambda v: _varint(len(b := v.encode("utf-8"))) + b),
    _F.TYPE_BYTES: (2, lambda v: _varint(len(v)) + bytes(v)),
    _F.TYPE_BOOL: (0, lambda v: b"\x01" if v else b"\x00"),
    _F.TYPE_INT32: (0, _varint),
    _F.TYPE_INT64: (0, _varint),
    _F.TYPE_UINT32: (0, _varint),
    _F.TYPE_UINT64: (0, _varint),
    _F.TYPE_ENUM: (0, _varint),
    _F.TYPE_SINT32: (0, _zigzag(32)),
    _F.TYPE_SINT64: (0, _zigzag(64)),
    _F.TYPE_FIXED32: (5, _packer("<I")),
    _F.TYPE_SFIXED32: (5, _packer("<i")),
    _F.TYPE_FLOAT: (5, _packer("<f")),
    _F.TYPE_FIXED64: (1, _packer("<Q")),
    _F.TYPE_SFIXED64: (1, _packer("<q")),
    _F.TYPE_DOUBLE: (1, _packer("<d")),
}


class _Uncompilable(Exception):
    """A message type this module does not handle; betterproto2 does."""


@cache
def _classes(module_name: str) -> dict[str, _MessageClass]:
    """The betterproto2 classes of a generated module, by full proto name."""
    found: dict[str, _MessageClass] = {}
    for value in vars(sys.modules[module_name]).values():
        if isinstance(value, type) and issubclass(value, betterproto2.Message):
            try:
                found[getattr(value, "DESCRIPTOR").full_name] = value  # noqa: B009
            except (AttributeError, KeyError):
                continue
    return found


def _class_for(owner: _MessageClass, descriptor: Descriptor) -> Any:
    cls = _classes(owner.__module__).get(descriptor.full_name)
    if cls is None:
        raise _Uncompilable(descriptor.full_name)
    return cls


def _repeated(field: FieldDescriptor) -> bool:
    # protobuf 7 dropped ``label``; older releases lack ``is_repeated``.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == _F.LABEL_REPEATED)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def upb_class(cls: _MessageClass) -> type[pb_message.Message]:
    """The C-backed ``google.protobuf`` class of a betterproto2 message class.

    Build one directly when even the conversion is too slow: the codec sends
    an instance of it as the bytes it serialises to.
    """
    made: type[pb_message.Message] = message_factory.GetMessageClass(cls.DESCRIPTOR)
    return made


class _Plan:
    """How to move one message type into and out of upb."""

    def __init__(self, cls: _MessageClass) -> None:
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
        return _plan(_class_for(self.cls, field.message_type))

    def _writer(self, field: FieldDescriptor) -> Callable[[Any, Any], None]:
        name = field.name
        if _is_map(field):
            return lambda msg, target: None  # written by _special_writer
        if field.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP):
            nested = self._nested(field)
            if _repeated(field):

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
        if _repeated(field):

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
        if _is_map(field):
            key_field, value_field = (
                field.message_type.fields_by_number[1],
                field.message_type.fields_by_number[2],
            )
            if key_field.type not in _SCALARS:
                raise _Uncompilable(field.full_name)
            key_wire, key_bytes = _SCALARS[key_field.type]
            key_tag = _tag(1, key_wire)
            if value_field.type == _F.TYPE_MESSAGE:
                nested = self._nested(value_field)
                value_tag = _tag(2, 2)

                def value_bytes(value: Any) -> bytes:
                    body = nested.encode(value)
                    return value_tag + _varint(len(body)) + body

            elif value_field.type in _SCALARS:
                value_wire, write = _SCALARS[value_field.type]
                scalar_tag = _tag(2, value_wire)

                def value_bytes(value: Any) -> bytes:
                    return scalar_tag + write(value)

            else:
                raise _Uncompilable(field.full_name)
            field_tag = _tag(field.number, 2)

            def map_bytes(msg: Any) -> bytes:
                out = []
                for key, value in getattr(msg, name).items():
                    entry = key_tag + key_bytes(key) + value_bytes(value)
                    out.append(field_tag + _varint(len(entry)) + entry)
                return b"".join(out)

            return map_bytes
        if field.type == _F.TYPE_MESSAGE and not _is_map(field):
            nested = self._nested(field)
            if not nested.has_map:
                return None
            field_tag = _tag(field.number, 2)

            def one(value: Any) -> bytes:
                body = nested.encode(value)
                return field_tag + _varint(len(body)) + body

            if _repeated(field):
                return lambda msg: b"".join(one(v) for v in getattr(msg, name))
            return lambda msg: b"" if (v := getattr(msg, name)) is None else one(v)
        return None

    def _reader(self, field: FieldDescriptor) -> Callable[[Any, dict[str, Any]], None]:
        name = field.name
        if _is_map(field):
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
            if _repeated(field):

                def repeated_message(source: Any, out: dict[str, Any]) -> None:
                    read = nested.read
                    out[name] = [read(v) for v in getattr(source, name)]

                return repeated_message

            def message(source: Any, out: dict[str, Any]) -> None:
                out[name] = nested.read(getattr(source, name)) if source.HasField(name) else None

            return message
        if _repeated(field):

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


_PLANS: dict[_MessageClass, _Plan] = {}


def _plan(cls: _MessageClass) -> _Plan:
    """The compiled plan of ``cls`` (and of every type it contains), made once."""
    plan = _PLANS.get(cls)
    if plan is not None:
        return plan
    plan = _PLANS[cls] = _Plan(cls)
    try:
        plan.has_map = _contains_map(cls.DESCRIPTOR, set())
        plan.compile()
    except Exception:
        del _PLANS[cls]
        raise
    return plan


def _contains_map(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if _is_map(field):
            return True
        if field.message_type is not None and _contains_map(field.message_type, seen):
            return True
    return False


_COMPILED: dict[_MessageClass, _Plan | None] = {}


def _compiled(cls: _MessageClass) -> _Plan | None:
    """The plan of ``cls``, or None for a type left to betterproto2 (decided once)."""
    try:
        return _COMPILED[cls]
    except KeyError:
        pass
    try:
        plan: _Plan | None = _plan(cls)
    except _Uncompilable:
        plan = None
    _COMPILED[cls] = plan
    return plan


def encode_message(message: betterproto2.Message) -> bytes:
    """The wire bytes of ``message``: betterproto2's bytes, made in C."""
    plan = _compiled(type(message))
    return plan.encode(message) if plan is not None else bytes(message)


def decode_message(data: bytes, cls: _MessageClass) -> Any:
    """Parse ``data`` as ``cls`` (in C). Raises ``google.protobuf.message.DecodeError``."""
    plan = _compiled(cls)
    return plan.decode(data) if plan is not None else cls.parse(data)


class CompiledProtoCodec(ProtoCodec):  # type: ignore[misc]  # grpclib is not type-checked
    """grpclib's protobuf codec, with betterproto2 messages encoded and parsed in C.

    Also accepts, as a response, a ``google.protobuf`` message of the declared
    type (see :func:`upb_class`). Request bytes that do not decode are the
    client's error: ``INVALID_ARGUMENT`` naming the message type (plain
    ProtoCodec lets the exception escape; grpclib would then log a traceback
    for every such request and answer UNKNOWN).
    """

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, betterproto2.Message) and type(message) is message_type:
            return encode_message(message)
        if isinstance(message, pb_message.Message) and _same_type(message, message_type):
            data: bytes = message.SerializeToString()
            return data
        return super().encode(message, message_type)  # type: ignore[no-any-return]

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            if isinstance(message_type, type) and issubclass(message_type, betterproto2.Message):
                return decode_message(data, message_type)
            return super().decode(data, message_type)
        except Exception as exc:
            name = getattr(message_type, "__name__", "request")
            raise GRPCError(Status.INVALID_ARGUMENT, f"malformed {name}: {exc}") from None


def _same_type(message: pb_message.Message, message_type: Any) -> bool:
    if isinstance(message, message_type):
        return True
    try:
        return bool(message.DESCRIPTOR.full_name == message_type.DESCRIPTOR.full_name)
    except AttributeError:
        return False
