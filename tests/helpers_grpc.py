"""Shared helpers for tests that host grpclib services and call them with grpcio.

grpcio is the independent peer: it runs in worker threads (``trio.to_thread``) with
its own I/O, so these tests use the real clock. Health and reflection messages come
from grpclib's generated modules: importing grpcio-health-checking's or
grpcio-reflection's ``*_pb2`` in the same process as grpclib's fails (both register
the same protobuf symbols under different file names).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import trio
from grpcio_support import Outcome, call_outcome
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from support.waiting import in_thread

from guardrefresh.proto import rule_installation as pb
from guardrefresh.server import GrpcHost, open_asyncio_loop

DATA_PLANE = "rule_installation.DataPlane"
GET_RULE = f"/{DATA_PLANE}/GetRule"
GET_RULE_STATS = f"/{DATA_PLANE}/GetRuleStats"

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


class ScriptedDataPlane(pb.DataPlaneBase):  # type: ignore[misc]  # generated code is not type-checked
    """A DataPlane whose GetRule does what its ``rule_id`` says.

    ``"sleep:<seconds>"`` sleeps (asyncio side) and then answers;
    ``"stubborn:<seconds>"`` does the same but swallows the first cancellation;
    ``"boom"`` raises an unexpected exception; anything else answers at once. The
    answer's ``tier`` is the length of the ``rule_id`` it received.
    """

    def __init__(self) -> None:
        self.finished: list[str] = []

    async def get_rule_stats(self, message: pb.GetRuleStatsRequest) -> pb.GetRuleStatsResponse:
        return pb.GetRuleStatsResponse(total_rules=7)

    async def get_rule(self, message: pb.GetRuleRequest) -> pb.GetRuleResponse:
        rule_id = message.rule_id
        if rule_id.startswith("sleep:"):
            await asyncio.sleep(float(rule_id.removeprefix("sleep:")))
        elif rule_id.startswith("stubborn:"):
            seconds = float(rule_id.removeprefix("stubborn:"))
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                await asyncio.sleep(seconds)  # a misbehaving handler; the next cancel ends it
        elif rule_id == "boom":
            raise RuntimeError("unexpected failure in a handler")
        self.finished.append(rule_id)
        return pb.GetRuleResponse(found=True, tier=str(len(rule_id)))


@asynccontextmanager
async def open_host(**kwargs: Any) -> AsyncIterator[tuple[GrpcHost, ScriptedDataPlane]]:
    """Serve a ScriptedDataPlane on 127.0.0.1:0; drain with no grace at exit if needed."""
    servicer = ScriptedDataPlane()
    async with open_asyncio_loop(), trio.open_nursery() as nursery:
        host = GrpcHost([servicer], **kwargs)
        await nursery.start(host.serve)
        yield host, servicer
        if host.report is None:
            await host.drain(0.0)


class Client:
    """A blocking grpcio client over one channel (one HTTP/2 connection); use from threads."""

    def __init__(self, port: int, credentials: grpc.ChannelCredentials | None = None) -> None:
        target = f"127.0.0.1:{port}"
        if credentials is None:
            self.channel = grpc.insecure_channel(target)
        else:
            self.channel = grpc.secure_channel(target, credentials)
        self._get_rule = self.channel.unary_unary(
            GET_RULE,
            request_serializer=bytes,
            response_deserializer=pb.GetRuleResponse.parse,
        )
        self._get_rule_stats = self.channel.unary_unary(
            GET_RULE_STATS,
            request_serializer=bytes,
            response_deserializer=pb.GetRuleStatsResponse.parse,
        )
        self._check = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )
        self._watch = self.channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )

    def get_rule(self, rule_id: str, timeout: float = 10.0) -> Outcome:
        request = pb.GetRuleRequest(rule_id=rule_id)
        return call_outcome(lambda: self._get_rule(request, timeout=timeout))

    def get_rule_stats(self, timeout: float = 10.0) -> Outcome:
        return call_outcome(lambda: self._get_rule_stats(pb.GetRuleStatsRequest(), timeout=timeout))

    def check(self, service: str = "", timeout: float = 5.0) -> Outcome:
        request = HealthCheckRequest(service=service)
        return call_outcome(lambda: self._check(request, timeout=timeout))

    def watch(self, seen: list[int], service: str = "", timeout: float = 10.0) -> Outcome:
        """Append every status the Watch stream sends to ``seen``; the outcome is how it ended."""

        def run() -> None:
            for response in self._watch(HealthCheckRequest(service=service), timeout=timeout):
                seen.append(response.status)

        return call_outcome(run)

    def stream_stream(self, method: str, serializer: Any, deserializer: Any) -> Any:
        return self.channel.stream_stream(
            method, request_serializer=serializer, response_deserializer=deserializer
        )

    def close(self) -> None:
        self.channel.close()


@asynccontextmanager
async def open_client(
    port: int, credentials: grpc.ChannelCredentials | None = None
) -> AsyncIterator[Client]:
    client = await trio.to_thread.run_sync(Client, port, credentials)
    try:
        yield client
    finally:
        await trio.to_thread.run_sync(client.close)


class Results:
    """Collects outcomes of calls started in the background."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}

    def start(
        self, nursery: trio.Nursery, name: str, fn: Callable[..., Outcome], *args: Any
    ) -> None:
        async def run() -> None:
            self.outcomes[name] = await in_thread(fn, *args)

        nursery.start_soon(run)


def iter_once(item: Any) -> Iterator[Any]:
    yield item
