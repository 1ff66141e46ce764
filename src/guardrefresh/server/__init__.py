"""gRPC hosting: grpclib services served inside Trio with a graceful drain, and the DataPlane."""

from ._auth import AdminAuth, TokenFileError
from ._codec import CompiledProtoCodec
from ._codec_plan import decode_message, encode_message
from ._dataplane import DataPlaneService
from ._dependency_internals import DependencyInternalsError
from ._edge_limits import FD_RESERVE, EdgeCounts, EdgeLimits, max_connections_for
from ._enforce import EnforceHandler
from ._enforce_outcome import EnforceObserver, EnforceOutcome
from ._enforce_wire import enforce_response, enforce_response_bytes
from ._host import DEFAULT_EXEMPT_METHODS, SHUTDOWN_MESSAGE, DrainReport, GrpcHost
from ._loop import forget_stale_deadlines, open_asyncio_loop
from ._loop_errors import LoopErrorHandler
from ._proto_fields import upb_class
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
    "forget_stale_deadlines",
    "max_connections_for",
    "open_asyncio_loop",
    "server_ssl_context",
    "upb_class",
]
