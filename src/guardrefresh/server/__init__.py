"""gRPC hosting: grpclib services served inside Trio with a graceful drain, and the DataPlane."""

from ._dataplane import DataPlaneService
from ._enforce import EnforceHandler, EnforceObserver, EnforceOutcome, enforce_response
from ._host import DEFAULT_EXEMPT_METHODS, SHUTDOWN_MESSAGE, DrainReport, GrpcHost
from ._loop import open_asyncio_loop

__all__ = [
    "DEFAULT_EXEMPT_METHODS",
    "SHUTDOWN_MESSAGE",
    "DataPlaneService",
    "DrainReport",
    "EnforceHandler",
    "EnforceObserver",
    "EnforceOutcome",
    "GrpcHost",
    "enforce_response",
    "open_asyncio_loop",
]
