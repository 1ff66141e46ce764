"""gRPC hosting: grpclib services served inside Trio with a graceful drain, and the DataPlane."""

from ._codec import CompiledProtoCodec, decode_message, encode_message, upb_class
from ._dataplane import DataPlaneService
from ._enforce import (
    EnforceHandler,
    EnforceObserver,
    EnforceOutcome,
    enforce_response,
    enforce_response_bytes,
)
from ._host import DEFAULT_EXEMPT_METHODS, SHUTDOWN_MESSAGE, DrainReport, GrpcHost
from ._loop import open_asyncio_loop

__all__ = [
    "DEFAULT_EXEMPT_METHODS",
    "SHUTDOWN_MESSAGE",
    "CompiledProtoCodec",
    "DataPlaneService",
    "DrainReport",
    "EnforceHandler",
    "EnforceObserver",
    "EnforceOutcome",
    "GrpcHost",
    "decode_message",
    "encode_message",
    "enforce_response",
    "enforce_response_bytes",
    "open_asyncio_loop",
    "upb_class",
]
