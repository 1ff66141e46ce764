"""gRPC hosting: grpclib services served inside Trio with a graceful drain, and the DataPlane."""

from ._dataplane import DataPlaneService
from ._host import DEFAULT_EXEMPT_METHODS, SHUTDOWN_MESSAGE, DrainReport, GrpcHost

__all__ = [
    "DEFAULT_EXEMPT_METHODS",
    "SHUTDOWN_MESSAGE",
    "DataPlaneService",
    "DrainReport",
    "GrpcHost",
]
