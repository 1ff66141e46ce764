"""gRPC hosting: grpclib services served inside Trio with a graceful drain, and the DataPlane."""

from ._auth import AdminAuth, TokenFileError
from ._codec import CompiledProtoCodec, decode_message, encode_message, upb_class
from ._connections import FD_RESERVE, EdgeCounts, EdgeLimits, max_connections_for
from ._dataplane import DataPlaneService
from ._dependency_internals import DependencyInternalsError
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
from ._tls import TlsConfigError, server_ssl_context

__all__ = [
    "DEFAULT_EXEMPT_METHODS",
    "FD_RESERVE",
    "SHUTDOWN_MESSAGE",
    "AdminAuth",
    "CompiledProtoCodec",
    "DataPlaneService",
    "DependencyInternalsError",
    "DrainReport",
    "EdgeCounts",
    "EdgeLimits",
    "EnforceHandler",
    "EnforceObserver",
    "EnforceOutcome",
    "GrpcHost",
    "LoopErrorHandler",
    "TlsConfigError",
    "TokenFileError",
    "decode_message",
    "encode_message",
    "enforce_response",
    "enforce_response_bytes",
    "max_connections_for",
    "open_asyncio_loop",
    "server_ssl_context",
    "upb_class",
]
