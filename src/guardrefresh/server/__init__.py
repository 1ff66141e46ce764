"""gRPC hosting: grpclib services served inside Trio, with a graceful drain."""

from ._host import DEFAULT_EXEMPT_METHODS, SHUTDOWN_MESSAGE, DrainReport, GrpcHost

__all__ = ["DEFAULT_EXEMPT_METHODS", "SHUTDOWN_MESSAGE", "DrainReport", "GrpcHost"]
