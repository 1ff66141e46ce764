"""The host's health service: one status for every service, Watch streams that end cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from ._calls import SHUTDOWN_MESSAGE

__all__ = ["DrainAwareHealth", "service_name"]


def service_name(service: object) -> str:
    """The gRPC service name of a grpclib servable (``rule_installation.DataPlane``)."""
    mapping = getattr(service, "__mapping__", None)
    if mapping is None:
        raise TypeError(f"{service!r} is not a grpclib service (no __mapping__)")
    path = next(iter(mapping()), None)
    if not isinstance(path, str) or path.count("/") != 2:
        raise TypeError(f"{service!r} has no methods")
    return path.split("/")[1]


class DrainAwareHealth(Health):  # type: ignore[misc]  # grpclib is not type-checked (pyproject)
    """grpclib's ``Health`` whose Watch streams end cleanly when the host closes.

    Every service and the overall server (``""``) share one status. grpclib's own
    Watch only stops when cancelled, which can overtake the NOT_SERVING it was about
    to send; here :meth:`close` wakes each Watch stream, which sends the current
    status if its client has not seen it yet and then ends with UNAVAILABLE.
    """

    def __init__(self, services: Sequence[object], status: ServiceStatus) -> None:
        super().__init__({service: [status] for service in services})
        self._shared_status = status
        self._names = frozenset({"", *(service_name(s) for s in services)})
        self._closing = False
        self._watchers: set[asyncio.Event] = set()

    def close(self) -> None:
        self._closing = True
        for changed in self._watchers:
            changed.set()

    async def Watch(
        self, stream: grpclib.server.Stream[HealthCheckRequest, HealthCheckResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        known = request.service in self._names
        changed = await self._shared_status.__subscribe__()
        self._watchers.add(changed)
        try:
            sent = None
            while True:
                changed.clear()
                if not known:
                    status = HealthCheckResponse.SERVICE_UNKNOWN
                elif self._shared_status.__status__():
                    status = HealthCheckResponse.SERVING
                else:
                    status = HealthCheckResponse.NOT_SERVING
                if status != sent:
                    await stream.send_message(HealthCheckResponse(status=status))
                    sent = status
                if self._closing:
                    raise GRPCError(Status.UNAVAILABLE, SHUTDOWN_MESSAGE)
                await changed.wait()
        finally:
            self._watchers.discard(changed)
            await self._shared_status.__unsubscribe__(changed)
