"""gRPC hosting: grpclib services served inside Trio with a graceful drain, and the DataPlane."""

from ._codec import CompiledProtoCodec, decode_message, encode_message, upb_class
from ._connections import FD_RESERVE, EdgeCounts, EdgeLimits, max_connections_for
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
from ._loop_errors import LoopErrorHandler

__all__ = [
    "DEFAULT_EXEMPT_METHODS",
    "FD_RESERVE",
    "SHUTDOWN_MESSAGE",
    "CompiledProtoCodec",
    "DataPlaneService",
    "DrainReport",
    "EdgeCounts",
    "EdgeLimits",
    "EnforceHandler",
    "EnforceObserver",
    "EnforceOutcome",
    "GrpcHost",
    "LoopErrorHandler",
    "decode_message",
    "encode_message",
    "enforce_response",
    "enforce_response_bytes",
    "max_connections_for",
    "open_asyncio_loop",
    "upb_class",
]
