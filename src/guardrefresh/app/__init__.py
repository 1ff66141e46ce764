"""The service process: wiring of bridge, refresh, scheduler and gRPC under one nursery."""

from ._errors import StartupError
from ._process import run_service
from ._service import serve_service

__all__ = ["StartupError", "run_service", "serve_service"]
