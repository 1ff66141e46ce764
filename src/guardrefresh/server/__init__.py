"""gRPC hosting: grpclib services served inside Trio with a graceful drain, and the DataPlane."""

from ._connections import FD_RESERVE, EdgeCounts, EdgeLimits, max_connections_for
from ._dataplane import DataPlaneService
from ._host import DEFAULT_EXEMPT_METHODS, SHUTDOWN_MESSAGE, DrainReport, GrpcHost
from ._loop import open_asyncio_loop

__all__ = [
    "DEFAULT_EXEMPT_METHODS",
    "FD_RESERVE",
    "SHUTDOWN_MESSAGE",
    "DataPlaneService",
    "DrainReport",
    "EdgeCounts",
    "EdgeLimits",
    "GrpcHost",
    "max_connections_for",
    "open_asyncio_loop",
]
