"""What every suite that drives a real service with grpcio shares.

- :func:`generate_grpcio_modules`: grpcio modules generated from the proto at test time
  (grpcio is the independent reference client), imported once per session.
- :class:`Outcome`: how a grpcio call ended.
- :class:`DataPlaneClient`: grpcio's DataPlane stub over one channel (blocking).
- :func:`raw_h2_call`: one gRPC call sent with hand-made HTTP/2 headers (h2, grpclib's
  own dependency), for what grpcio will not send, such as an already-expired
  ``grpc-timeout``.
"""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import grpc
import h2.config
import h2.connection
import h2.events
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO_ROOT / "proto"
PROTO_FILE = PROTO_DIR / "rule_installation.proto"
_MODULES = ("rule_installation_pb2", "rule_installation_pb2_grpc")

HOST = "127.0.0.1"
DATA_PLANE = "rule_installation.DataPlane"
# Long enough for the biggest call of any suite on a busy CI machine; a hang still fails.
CALL_TIMEOUT_S = 30.0
# The service's own limit is the one under test: the client must never be the one to refuse.
CLIENT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def generate_grpcio_modules(out_dir: Path) -> types.SimpleNamespace:
    """grpcio modules generated from the proto with grpc_tools.protoc, imported.

    Returns ``pb2`` (messages) and ``pb2_grpc`` (stubs). If an earlier suite of this
    session imported them already (same proto, same names), those are reused:
    protobuf refuses to register the same file twice.
    """
    if not all(name in sys.modules for name in _MODULES):
        out_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
                f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(PROTO_FILE),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"grpc_tools.protoc failed:\n{result.stderr}")
        # The generated stub imports the messages by module name: import both while
        # the folder is on the path; they stay in sys.modules afterwards.
        sys.path.insert(0, str(out_dir))
        try:
            importlib.invalidate_caches()
            for name in _MODULES:
                importlib.import_module(name)
        finally:
            sys.path.remove(str(out_dir))
    return types.SimpleNamespace(pb2=sys.modules[_MODULES[0]], pb2_grpc=sys.modules[_MODULES[1]])


@attrs.frozen
class Outcome:
    """How a grpcio call ended."""

    code: grpc.StatusCode
    details: str
    response: Any
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


def call_outcome(call: Callable[[], Any]) -> Outcome:
    """Run one blocking grpcio call and say how it ended (never raises RpcError)."""
    start = time.monotonic()
    try:
        response = call()
    except grpc.RpcError as err:
        return Outcome(err.code(), err.details() or "", None, time.monotonic() - start)
    return Outcome(grpc.StatusCode.OK, "", response, time.monotonic() - start)


class DataPlaneClient:
    """grpcio's DataPlane stub over one channel. Blocking: use from worker threads.

    With ``own_connection`` the channel never shares its HTTP/2 connection with
    another client of this process, as separate agents would not.
    """

    def __init__(
        self, modules: types.SimpleNamespace, port: int, *, own_connection: bool = False
    ) -> None:
        self.pb2 = modules.pb2
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE_BYTES),
        ]
        if own_connection:
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.channel = grpc.insecure_channel(f"{HOST}:{port}", options=options)
        self.stub = modules.pb2_grpc.DataPlaneStub(self.channel)

    def __enter__(self) -> DataPlaneClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, *, deadline_s: float = CALL_TIMEOUT_S) -> Any:
        """``stub.<Method>(request)``; raises :class:`grpc.RpcError` on a non-OK status."""
        return getattr(self.stub, method)(request, timeout=deadline_s)

    def outcome(self, method: str, request: Any, *, deadline_s: float = CALL_TIMEOUT_S) -> Outcome:
        return call_outcome(lambda: self.call(method, request, deadline_s=deadline_s))

    def raw(self, method: str, payload: bytes, *, deadline_s: float = CALL_TIMEOUT_S) -> Outcome:
        """Send ``payload`` as the request message of DataPlane ``method`` as it is."""
        return self.raw_path(f"/{DATA_PLANE}/{method}", payload, deadline_s=deadline_s)

    def raw_path(self, path: str, payload: bytes, *, deadline_s: float = CALL_TIMEOUT_S) -> Outcome:
        """Send ``payload`` to the method at ``path`` without (de)serializers."""
        multicallable = self.channel.unary_unary(
            path, request_serializer=None, response_deserializer=None
        )
        return call_outcome(lambda: multicallable(payload, timeout=deadline_s))

    def health_responds(self, deadline_s: float) -> bool:
        """Whether the server answers a health Check within ``deadline_s``.

        A server whose event loop is busy (parsing a big request) does not.
        """
        outcome = self.raw_path("/grpc.health.v1.Health/Check", b"", deadline_s=deadline_s)
        if outcome.code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return False
        if not outcome.ok:
            raise AssertionError(f"health Check ended {outcome.code.name}: {outcome.details}")
        return True

    def stats(self) -> Any:
        return self.call("GetRuleStats", self.pb2.GetRuleStatsRequest())

    def status(self) -> Any:
        return self.call("GetRefreshStatus", self.pb2.GetRefreshStatusRequest())


def grpc_request_headers(
    port: int, path: str, extra: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """The HTTP/2 request headers of a gRPC call to ``path`` on 127.0.0.1:``port``."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", f"127.0.0.1:{port}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


def raw_h2_call(
    port: int,
    path: str,
    message: bytes | None,
    headers: Sequence[tuple[str, str]] = (),
    *,
    timeout_s: float = 10.0,
) -> dict[str, str]:
    """Send one unary gRPC call over a fresh HTTP/2 connection to 127.0.0.1:``port``.

    ``message`` is the serialized request (None: the headers end the request, with no
    message at all); ``headers`` are added to the standard ones
    (for example ``("grpc-timeout", "1n")``). Returns the response headers and trailers
    merged (``grpc-status``, ``grpc-message``, ...). Fails the test when the call has
    not ended after ``timeout_s``.
    """
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    connection = h2.connection.H2Connection(config=config)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        connection.initiate_connection()
        stream_id = connection.get_next_available_stream_id()
        connection.send_headers(
            stream_id, grpc_request_headers(port, path, headers), end_stream=message is None
        )
        frame = b"" if message is None else b"\x00" + len(message).to_bytes(4, "big") + message
        # One flow-control window is plenty for a test request; no waiting for updates.
        window = connection.local_flow_control_window(stream_id)
        if len(frame) > window:
            pytest.fail(f"raw_h2_call sends at most {window} bytes, not {len(frame)}")
        size = connection.max_outbound_frame_size
        for offset in range(0, len(frame), size):
            end = offset + size >= len(frame)
            connection.send_data(stream_id, frame[offset : offset + size], end_stream=end)
        sock.sendall(connection.data_to_send())
        answer: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if getattr(event, "stream_id", None) != stream_id:
                    continue
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    answer.update((str(k), str(v)) for k, v in event.headers or ())
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return answer
            sock.sendall(connection.data_to_send())
    pytest.fail(f"raw HTTP/2 call to {path} did not end; got {answer}")
