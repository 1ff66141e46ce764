"""The pieces the compiled codec is built from: protobuf wire encoding of scalars
and map entries, facts read from the embedded descriptors, and the upb classes.

Kept apart from the plans (:mod:`._codec_plan`) so those read as what is written
where, not how a varint is laid out.
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

__all__ = [
    "SCALARS",
    "MessageClass",
    "Uncompilable",
    "class_for",
    "contains_map",
    "is_map",
    "is_repeated",
    "tag",
    "upb_class",
    "varint",
]

_F = FieldDescriptor
#: A generated betterproto2 message class (betterproto2 is not type-checked here).
MessageClass = Any


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64: ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def zigzag(bits: int) -> Callable[[int], bytes]:
    return lambda v: varint((v << 1) ^ (v >> (bits - 1)))


def packer(fmt: str) -> Callable[[Any], bytes]:
    return struct.Struct(fmt).pack


#: Scalar writers for map keys and values: (wire type, value -> bytes without the tag).
SCALARS: dict[int, tuple[int, Callable[[Any], bytes]]] = {
    _F.TYPE_STRING: (2, lambda v: varint(len(b := v.encode("utf-8"))) + b),
    _F.TYPE_BYTES: (2, lambda v: varint(len(v)) + bytes(v)),
    _F.TYPE_BOOL: (0, lambda v: b"\x01" if v else b"\x00"),
    _F.TYPE_INT32: (0, varint),
    _F.TYPE_INT64: (0, varint),
    _F.TYPE_UINT32: (0, varint),
    _F.TYPE_UINT64: (0, varint),
    _F.TYPE_ENUM: (0, varint),
    _F.TYPE_SINT32: (0, zigzag(32)),
    _F.TYPE_SINT64: (0, zigzag(64)),
    _F.TYPE_FIXED32: (5, packer("<I")),
    _F.TYPE_SFIXED32: (5, packer("<i")),
    _F.TYPE_FLOAT: (5, packer("<f")),
    _F.TYPE_FIXED64: (1, packer("<Q")),
    _F.TYPE_SFIXED64: (1, packer("<q")),
    _F.TYPE_DOUBLE: (1, packer("<d")),
}


class Uncompilable(Exception):
    """A message type this module does not handle; betterproto2 does."""


@cache
def _classes(module_name: str) -> dict[str, MessageClass]:
    """The betterproto2 classes of a generated module, by full proto name."""
    found: dict[str, MessageClass] = {}
    for value in vars(sys.modules[module_name]).values():
        if isinstance(value, type) and issubclass(value, betterproto2.Message):
            try:
                found[getattr(value, "DESCRIPTOR").full_name] = value  # noqa: B009
            except (AttributeError, KeyError):
                continue
    return found


def class_for(owner: MessageClass, descriptor: Descriptor) -> Any:
    cls = _classes(owner.__module__).get(descriptor.full_name)
    if cls is None:
        raise Uncompilable(descriptor.full_name)
    return cls


def is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 7 dropped ``label``; older releases lack ``is_repeated``.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == _F.LABEL_REPEATED)


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def upb_class(cls: MessageClass) -> type[pb_message.Message]:
    """The C-backed ``google.protobuf`` class of a betterproto2 message class.

    Build one directly when even the conversion is too slow: the codec sends
    an instance of it as the bytes it serialises to.
    """
    made: type[pb_message.Message] = message_factory.GetMessageClass(cls.DESCRIPTOR)
    return made


def contains_map(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if is_map(field):
            return True
        if field.message_type is not None and contains_map(field.message_type, seen):
            return True
    return False
