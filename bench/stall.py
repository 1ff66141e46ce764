"""Memory after a stall attack (issue 14, item 3): does RSS come back?

The issue's attack against the real service (``python -m guardrefresh``, default
limits): ``stall_idle_connections`` x 100 streams that send their headers and
nothing more (4,000 in the full run), and 10 connections x 10 calls whose bodies
declare 4,000,000 bytes and stall after 3,900,000 (the pending-bytes budget admits
16 of them; the rest are refused at their prefix). Once every stalled body has been
sent or refused, the attackers close their connections. The service's VmRSS is read
before, at its peak and ``AFTER_S`` seconds after the attackers left. Target: after
<= 1.2 x before. Run twice: on the plan's gRPC store (``rss_after_stall_attack``) and on
an empty one (``rss_after_stall_attack_empty_store``: the issue's own case, where the
same leftover is the largest share of what the process holds). ``--tiny``: 2 x 100
header-only streams and 1 x 4 stalled bodies.

The attacker is a plain ``h2`` client (grpcio cannot send half a request).
"""

from __future__ import annotations

import select
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from ._data import STORE_NAME, Plan, Target, Workspace, entry
from .edge import _rss_mib
from .grpc_server import real_service

__all__ = ["run_stall"]

GET_RULE = "/rule_installation.DataPlane/GetRule"
GET_RULE_STATS = "/rule_installation.DataPlane/GetRuleStats"
STREAMS_PER_CONNECTION = 100
DECLARED = 4_000_000
SENT = 3_900_000
#: Seconds after the attackers left at which RSS is read ("after").
AFTER_S = 20.0
#: Bound on the attack itself.
ATTACK_TIMEOUT_S = 90.0
RATIO_TARGET = 1.2


class _Attacker:
    """One HTTP/2 connection whose streams never end (a prefix and ``SENT`` bytes, or
    only headers); sends as the server's flow-control windows allow."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        self.port = port
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        self.pending: dict[int, bytes] = {}
        self.statuses: Counter[str] = Counter()
        self.closed = False

    def start(self, *, body: bool) -> None:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", GET_RULE),
                (":authority", f"127.0.0.1:{self.port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        if body:
            self.pending[stream_id] = b"\x00" + DECLARED.to_bytes(4, "big") + bytes(SENT)
        self._send()

    def pump(self) -> None:
        if self.closed:
            return
        readable, _, _ = select.select([self.sock], [], [], 0)
        if readable:
            data = self.sock.recv(1 << 20)
            if not data:
                self.closed = True
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.closed = True
                return
            for event in events:
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    status = dict(event.headers or ()).get("grpc-status")
                    if status is not None:
                        self.statuses[str(status)] += 1
                        self.pending.pop(event.stream_id, None)
                elif isinstance(event, h2.events.StreamReset):
                    self.statuses["reset"] += 1
                    self.pending.pop(event.stream_id, None)
        self._send()

    def _send(self) -> None:
        for stream_id, data in list(self.pending.items()):
            try:
                window = min(
                    self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
                )
                while data and window > 0:
                    self.h2.send_data(stream_id, data[:window])
                    data = data[window:]
                    window = min(
                        self.h2.local_flow_control_window(stream_id),
                        self.h2.max_outbound_frame_size,
                    )
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                data = b""
            if data:
                self.pending[stream_id] = data
            else:
                del self.pending[stream_id]
        out = self.h2.data_to_send()
        if out:
            self.sock.sendall(out)

    def close(self) -> None:
        self.sock.close()


def run_stall(ws: Workspace, plan: Plan) -> dict[str, Any]:
    """The memory-after-attack benchmarks; part of the ``edge`` section."""
    empty = ws.fresh_dir("stall-empty") / STORE_NAME
    return {
        "rss_after_stall_attack": _stall(ws, plan, ws.clone(plan.grpc_rules), plan.grpc_rules),
        "rss_after_stall_attack_empty_store": _stall(ws, plan, empty, 0),
    }


def _stall(ws: Workspace, plan: Plan, path: Path, store_rules: int) -> dict[str, Any]:
    import grpc

    log_dir = ws.root / "logs"
    log_dir.mkdir(exist_ok=True)
    idle_connections, stall_connections, stalls = (2, 1, 4) if plan.tiny else (40, 10, 10)
    with real_service(path, log_dir) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            call = channel.unary_unary(GET_RULE_STATS)
            for _ in range(50):
                call(b"", timeout=10.0)
            time.sleep(1.0)
            before = peak = _rss_mib(server.pid)
            attackers: list[_Attacker] = []
            started = time.monotonic()
            try:
                for _ in range(idle_connections):
                    attacker = _Attacker(server.port)
                    attackers.append(attacker)
                    for _ in range(STREAMS_PER_CONNECTION):
                        attacker.start(body=False)
                stalling = []
                for _ in range(stall_connections):
                    attacker = _Attacker(server.port)
                    attackers.append(attacker)
                    stalling.append(attacker)
                    for _ in range(stalls):
                        attacker.start(body=True)
                while time.monotonic() - started < ATTACK_TIMEOUT_S and any(
                    a.pending and not a.closed for a in stalling
                ):
                    for attacker in attackers:
                        attacker.pump()
                    peak = max(peak, _rss_mib(server.pid))
                attack_s = time.monotonic() - started
                statuses: Counter[str] = Counter()
                for attacker in stalling:
                    statuses.update(attacker.statuses)
            finally:
                for attacker in attackers:
                    attacker.close()
            curve = []
            after_s = 3.0 if plan.tiny else AFTER_S
            for _ in range(int(after_s)):
                time.sleep(1.0)
                curve.append(round(_rss_mib(server.pid), 1))
            after = curve[-1]
            call(b"", timeout=10.0)  # still serving
        finally:
            channel.close()
    ratio = after / before
    result = entry(
        parameters={
            "store_rules": store_rules,
            "header_only_streams": idle_connections * STREAMS_PER_CONNECTION,
            "stalled_bodies": stall_connections * stalls,
            "declared_bytes": DECLARED,
            "sent_bytes": SENT,
            "after_s": after_s,
            "server": "python -m guardrefresh (default limits)",
        },
        unit="ratio",
        samples=[ratio],
        targets=[Target("median", "<=", RATIO_TARGET, "ratio")],
        applies=not plan.tiny,
        extra={
            "rss_mib": {"before": round(before, 1), "peak": round(peak, 1), "after": after},
            "rss_mib_each_second_after": curve,
            "attack_s": round(attack_s, 1),
            "stalled_call_statuses": dict(statuses),
        },
    )
    return result
