"""Helpers of the end-to-end tests: CLI runs, rule builders, and three kinds of client.

- The service itself is started with :func:`support.trio_service.open_service`;
  :func:`run_cli` runs a command of it to completion.
- :func:`open_grpclib_client`: the project's own grpclib client (betterproto2 stub),
  run inside ``trio_asyncio.open_loop()``. :class:`HeldCall` sends a call's request
  headers and holds its message back: the call is then in flight on the server (its
  handler runs and waits for the message) until the test lets it finish, which makes
  "SIGTERM with calls in flight" deterministic.
- :class:`DataPlaneClient`: grpcio, the independent reference implementation, with
  modules generated from ``proto/rule_installation.proto`` at test time; blocking, so
  call it through ``trio.to_thread.run_sync``.
- :func:`open_grpcio_peer`: grpcio's health (``grpc_health.v1``) and reflection
  (``grpc_reflection.v1alpha``) clients, in a separate process (this file run as a
  script). They cannot share a process with the rest of the test suite: grpclib's
  generated health and reflection modules, imported by other tests, register the same
  protobuf symbols under other file names, and protobuf refuses the second set.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import trio
import trio_asyncio
from grpcio_support import CALL_TIMEOUT_S, DATA_PLANE, HOST, DataPlaneClient
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError
from support.payloads import anchor_rows, anchors_payload
from support.service import service_command, service_env

from guardrefresh.proto import rule_installation as pb

TESTS_DIR = str(Path(__file__).resolve().parents[1])
STOP_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 30.0

POLICY_TYPES = ("forbidden", "context_allow", "context_deny", "context_defer")


# ------------------------------------------------------------------ processes ---


async def run_cli(
    workdir: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m guardrefresh ARGS`` to completion (bounded); stdout/stderr captured."""
    with trio.fail_after(CLI_TIMEOUT_S):
        return await trio.run_process(
            service_command(*args),
            cwd=workdir,
            env=service_env(env),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def end_process(process: trio.Process) -> None:
    """Kill ``process`` if it still runs and reap it (shielded).

    Its output pipes then reach EOF, which ends the tasks reading them.
    """
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()


async def close_process(process: trio.Process) -> None:
    """:func:`end_process`, then close its pipes."""
    await end_process(process)
    with trio.CancelScope(shield=True):
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()


# ------------------------------------------------------------- rule builders ---


def _f32(value: float) -> float:
    # Values that float32 holds exactly survive the wire and storage bit for bit.
    return float(np.float32(value))


def anchor_vectors(count: int, *, seed: int) -> list[pb.AnchorVector]:
    return [pb.AnchorVector(values=row) for row in anchor_rows(count, seed=seed)]


def full_rule(
    rule_id: str,
    *,
    seed: int = 0,
    family_id: str = "fam-net",
    layer: str = "L1",
    agent_id: str = "",
    policy_type: str = "forbidden",
    counts: Sequence[int] = (1, 2, 3, 16),
    slice_weights: Sequence[float] = (0.5, 0.25, 0.125, 0.125),
    **overrides: Any,
) -> pb.RuleInstance:
    """A valid rule with every field of ``RuleInstance`` set to something non-default.

    Params hold one value of each ``ParamValue`` kind; anchors fill all four slots.
    """
    fields: dict[str, Any] = {
        "rule_id": rule_id,
        "family_id": family_id,
        "layer": layer,
        "agent_id": agent_id,
        "priority": 10 + seed,
        "enabled": seed % 2 == 0,
        "created_at_ms": 1_700_000_000_000 + seed,
        "params": {
            "host": pb.ParamValue(string_value=f"db-{seed}.internal"),
            "max_rows": pb.ParamValue(int_value=2**40 + seed),
            "ratio": pb.ParamValue(float_value=0.1 + seed),
            "strict": pb.ParamValue(bool_value=True),
            "off": pb.ParamValue(bool_value=False),
            "tags": pb.ParamValue(string_list=pb.StringList(values=["pii", "eu", f"s{seed}"])),
        },
        "anchors": anchors_payload(counts, seed=seed),
        "policy_type": policy_type,
        "drift_threshold": _f32(0.375 + seed / 8),
        "modification_spec": json.dumps({"redact": ["ssn", "iban"], "seed": seed}),
        "slice_weights": [_f32(w) for w in slice_weights],
    }
    fields.update(overrides)
    return pb.RuleInstance(**fields)


def rule_set(agent_id: str, prefix: str, *, seed: int = 0) -> list[pb.RuleInstance]:
    """One rule per policy type, two families and layers, global and agent-scoped ones."""
    return [
        full_rule(f"{prefix}-forbidden", seed=seed, policy_type="forbidden"),
        full_rule(
            f"{prefix}-allow",
            seed=seed + 1,
            policy_type="context_allow",
            agent_id=agent_id,
            counts=(16, 0, 1, 2),
            slice_weights=(),
        ),
        full_rule(
            f"{prefix}-deny",
            seed=seed + 2,
            policy_type="context_deny",
            family_id="fam-fs",
            layer="L2",
            agent_id=agent_id,
        ),
        full_rule(
            f"{prefix}-defer",
            seed=seed + 3,
            policy_type="context_defer",
            family_id="fam-fs",
            layer="L2",
            counts=(0, 0, 0, 1),
            modification_spec="",
        ),
    ]


def stats_rows(response: Any) -> dict[tuple[str, str], tuple[int, int, int]]:
    """``GetRuleStatsResponse.table_stats`` as {(family, layer): (rules, global, scoped)}.

    Works for the betterproto2 and the grpcio message alike.
    """
    return {
        (t.family_id, t.layer_id): (t.rule_count, t.global_count, t.scoped_count)
        for t in response.table_stats
    }


# --------------------------------------------------------------- grpclib side ---


class _BytesOrProtoCodec(ProtoCodec):  # type: ignore[misc]
    """ProtoCodec that also sends already serialized messages as they are.

    betterproto2 serializes a big request of anchors slowly (seconds for a few MB);
    the tests build those with protobuf (grpcio's runtime) and send the bytes.
    """

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        return super().encode(message, message_type)  # type: ignore[no-any-return]


class GrpclibClient:
    """The project's betterproto2/grpclib stub, callable from Trio code."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.stub = pb.DataPlaneStub(channel)

    async def call(self, method: str, request: Any, *, deadline_s: float = CALL_TIMEOUT_S) -> Any:
        """``stub.<method>(request)``; raises :class:`GRPCError` on a non-OK status."""
        bound = getattr(self.stub, method)

        async def run() -> Any:
            return await bound(request, timeout=deadline_s)

        return await trio_asyncio.aio_as_trio(run)()

    async def status(
        self, method: str, request: Any, *, deadline_s: float = CALL_TIMEOUT_S
    ) -> tuple[Status, str]:
        """The status code and message a call ends with (OK and "" on success)."""
        try:
            await self.call(method, request, deadline_s=deadline_s)
        except GRPCError as exc:
            return exc.status, exc.message or ""
        return Status.OK, ""

    def held_call(
        self, method: str, reply_type: type[Any], *, deadline_s: float = CALL_TIMEOUT_S
    ) -> HeldCall:
        return HeldCall(self.channel, method, reply_type, deadline_s=deadline_s)


class HeldCall:
    """A unary call whose request headers go out first and its message only later.

    Between :meth:`send_headers` and :meth:`finish` the call is in flight on the
    server: its handler has started and waits for the message, like a client on a
    slow link. Use as an async context manager; leaving it resets an unfinished call.
    """

    def __init__(
        self, channel: Channel, method: str, reply_type: type[Any], *, deadline_s: float
    ) -> None:
        self._stream = channel.request(
            f"/{DATA_PLANE}/{method}",
            Cardinality.UNARY_UNARY,
            bytes,
            reply_type,
            timeout=deadline_s,
        )
        self._open = False
        self._headers_sent = False

    async def __aenter__(self) -> HeldCall:
        await trio_asyncio.aio_as_trio(self._stream.__aenter__)()
        self._open = True
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if not self._open:
            return
        self._open = False
        stream = self._stream
        headers_sent = self._headers_sent

        async def close() -> None:
            # Not finished: reset it, rather than wait for an answer that needs the message.
            if headers_sent:
                with contextlib.suppress(Exception):  # the connection may be gone already
                    await stream.cancel()
            await stream.__aexit__(*exc_info)

        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(close)()

    async def send_headers(self) -> None:
        await trio_asyncio.aio_as_trio(self._stream.send_request)()
        self._headers_sent = True

    async def finish(self, message: Any) -> Any:
        """Send the request message; return the reply or raise :class:`GRPCError`.

        ``message`` is a betterproto2 message or its serialized bytes.
        """
        raw = message if isinstance(message, bytes) else bytes(message)
        stream = self._stream

        async def steps() -> Any:
            await stream.send_message(raw, end=True)
            return await stream.recv_message()

        return await self._complete(steps)

    async def wait_without_message(self) -> Any:
        """Wait for the server to end the call although the message never came.

        Raises :class:`GRPCError` with the status the server ended the call with.
        """
        return await self._complete(self._stream.recv_message)

    async def _complete(self, steps: Any) -> Any:
        stream = self._stream

        async def run() -> Any:
            # What ``async with stream:`` does around the steps. A server that ends a
            # call before the client finished sending resets the stream after its
            # status (HTTP/2 allows it); grpclib raises that status on the way out.
            try:
                reply = await steps()
            except BaseException as exc:
                self._open = False
                await stream.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            self._open = False
            await stream.__aexit__(None, None, None)
            return reply

        return await trio_asyncio.aio_as_trio(run)()


@asynccontextmanager
async def open_grpclib_client(port: int) -> AsyncIterator[GrpclibClient]:
    """A grpclib channel to ``127.0.0.1:port`` in its own trio-asyncio loop; closed at exit."""
    async with trio_asyncio.open_loop():
        channel = await trio_asyncio.aio_as_trio(_make_channel)(port)
        try:
            yield GrpclibClient(channel)
        finally:
            channel.close()


async def _make_channel(port: int) -> Channel:
    # grpclib binds the running asyncio loop at construction: build it on that side.
    return Channel(HOST, port, codec=_BytesOrProtoCodec())


# ---------------------------------------------------------------- grpcio side ---


@asynccontextmanager
async def open_grpcio_client(
    modules: types.SimpleNamespace, port: int
) -> AsyncIterator[DataPlaneClient]:
    client = await trio.to_thread.run_sync(DataPlaneClient, modules, port)
    try:
        yield client
    finally:
        await trio.to_thread.run_sync(client.close)


def to_grpcio(modules: types.SimpleNamespace, message: Any) -> Any:
    """The grpcio twin of a betterproto2 message (same bytes on the wire)."""
    return getattr(modules.pb2, type(message).__name__).FromString(bytes(message))


def big_install_request(
    modules: types.SimpleNamespace, agent_id: str, count: int, *, prefix: str = "bulk"
) -> Any:
    """An InstallRulesRequest (grpcio message) of ``count`` rules with 4 x 16 anchors each.

    Every rule carries the full 8 KiB of anchors, which is what makes the server work:
    it decodes about 64 small messages per rule.
    """
    pb2 = modules.pb2
    template = to_grpcio(modules, anchors_payload((16, 16, 16, 16), seed=7))
    request = pb2.InstallRulesRequest(agent_id=agent_id, config_id="bulk-cfg", owner="e2e")
    for i in range(count):
        rule = request.rules.add(
            rule_id=f"{prefix}-{i:05d}",
            family_id=f"fam-bulk-{i % 3}",
            layer="L1",
            priority=i % 100,
            enabled=True,
            created_at_ms=1_700_000_000_000 + i,
            policy_type=POLICY_TYPES[i % 4],
            drift_threshold=0.5,
        )
        rule.anchors.CopyFrom(template)
    return request


# ------------------------------------------------ grpcio health/reflection peer ---


class GrpcioPeer:
    """Talks to a child process running grpcio's health and reflection clients.

    The child holds one channel, opened by its first request; ``check`` and ``reflect``
    answer one request each, ``start_watch`` starts a Watch stream whose statuses arrive
    through :meth:`next_watch` (the last item is ``END <status code>``).
    """

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._queues: dict[str, tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]]]
        self._queues = {op: trio.open_memory_channel(100) for op in ("check", "watch", "reflect")}

    async def _read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                message = json.loads(line)
                await self._queues[message["op"]][0].send(message)
        for send, _ in self._queues.values():
            await send.aclose()

    async def _request(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def _next(self, op: str, limit_s: float) -> dict[str, Any]:
        with trio.fail_after(limit_s):
            message: dict[str, Any] = await self._queues[op][1].receive()
            return message

    async def check(self, service: str = "", *, limit_s: float = 10.0) -> str:
        """``Health/Check``: a status name (SERVING, ...) or the error's status code name."""
        await self._request(f"check {service}")
        message = await self._next("check", limit_s)
        return str(message["result"])

    async def start_watch(self, service: str = "") -> None:
        await self._request(f"watch {service}")

    async def next_watch(self, *, limit_s: float = 10.0) -> str:
        message = await self._next("watch", limit_s)
        return str(message["result"])

    async def reflect(self, *, limit_s: float = 10.0) -> dict[str, Any]:
        await self._request("reflect")
        message = await self._next("reflect", limit_s)
        result: dict[str, Any] = message["result"]
        return result


@asynccontextmanager
async def open_grpcio_peer(port: int) -> AsyncIterator[GrpcioPeer]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(Path(__file__).resolve()), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # Run as a script, this file still imports the shared tests/ helpers.
        env=service_env(
            {"PYTHONPATH": os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")]))}
        ),
    )
    peer = GrpcioPeer(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer._read)
            try:
                yield peer
            finally:
                with trio.CancelScope(shield=True):
                    assert process.stdin is not None
                    await process.stdin.aclose()  # EOF: the child closes its channel, exits
                    with trio.move_on_after(STOP_TIMEOUT_S):
                        await process.wait()
                await end_process(process)
    finally:
        await close_process(process)


def _peer_main(port: int) -> int:
    """The child side of :class:`GrpcioPeer`: one JSON line out per answer."""
    from google.protobuf import descriptor_pool
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpc.insecure_channel(f"{HOST}:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    names = health_pb2.HealthCheckResponse.ServingStatus.Name
    out_lock = threading.Lock()

    def emit(op: str, result: Any) -> None:
        with out_lock:
            sys.stdout.write(json.dumps({"op": op, "result": result}) + "\n")
            sys.stdout.flush()

    def watch(service: str) -> None:
        end = "OK"
        try:
            for response in health.Watch(
                health_pb2.HealthCheckRequest(service=service), timeout=60
            ):
                emit("watch", names(response.status))
        except grpc.RpcError as err:
            end = err.code().name
        emit("watch", f"END {end}")

    def reflect() -> dict[str, Any]:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        file = database.FindFileContainingSymbol(DATA_PLANE)
        pool = descriptor_pool.DescriptorPool(database)
        rule = pool.FindMessageTypeByName("rule_installation.RuleInstance")
        return {
            "services": services,
            "file": file.name,
            "package": file.package,
            "methods": {s.name: [m.name for m in s.method] for s in file.service},
            "rule_fields": [f.name for f in rule.fields],
        }

    for line in sys.stdin:
        op, _, arg = line.strip().partition(" ")
        if op == "check":
            try:
                response = health.Check(health_pb2.HealthCheckRequest(service=arg), timeout=5)
                emit("check", names(response.status))
            except grpc.RpcError as err:
                emit("check", err.code().name)
        elif op == "watch":
            threading.Thread(target=watch, args=(arg,), daemon=True).start()
        elif op == "reflect":
            emit("reflect", reflect())
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(_peer_main(int(sys.argv[1])))
