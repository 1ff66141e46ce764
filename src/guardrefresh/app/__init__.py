"""The service process: wiring of bridge, refresh, scheduler and gRPC under one nursery."""

from ._service import StartupError, run_service, serve_service

__all__ = ["StartupError", "run_service", "serve_service"]
