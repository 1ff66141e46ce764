"""Compiled protobuf encoding and decoding for the betterproto2 messages.

betterproto2 encodes and parses field by field in pure Python: one
EnforceResponse with 1,000 evidence entries takes tens of milliseconds on the
event loop. The generated code embeds the ``.proto`` descriptors, from which
``google.protobuf`` builds message classes backed by its C runtime (upb).
:mod:`._codec_plan` moves betterproto2 objects into such messages and back
(built from the wire pieces in :mod:`._proto_fields`), so the bytes are produced
and parsed in C while handlers keep the typed betterproto2 API; this module is
the grpclib codec that uses it.

The bytes are exactly betterproto2's (a property test compares them):

- fields in field-number order, default values of implicit-presence fields
  left out (for float and double, ``-0.0`` too, as betterproto2 does);
- map entries in the dict's insertion order, key and value always written
  (upb would reorder them): messages that contain a map, directly or deeper,
  are written run by run, the map fields between runs encoded here;
- unknown fields a parsed message carried are written at its end.

Decoding gives the objects betterproto2's parser would give, except that
unknown fields are dropped (no handler uses them). A message type that
cannot be compiled (none in this package) falls back to betterproto2.
"""

from __future__ import annotations

from typing import Any

import betterproto2
from google.protobuf import message as pb_message
from grpclib import GRPCError, Status
from grpclib.encoding.proto import ProtoCodec

from ._codec_plan import decode_message, encode_message

__all__ = ["CompiledProtoCodec"]


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
