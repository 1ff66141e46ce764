"""The service process: wiring of bridge, refresh, scheduler and gRPC under one nursery."""

from ._run import run_service
from ._service import serve_service
from ._startup import StartupError

__all__ = ["StartupError", "run_service", "serve_service"]
