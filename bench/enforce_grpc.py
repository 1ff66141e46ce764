"""Enforce over gRPC against the real service (issue 15, section 5).

A ``python -m guardrefresh`` process serves a fresh store; one tenant gets ``n`` rules
scoped to it (forbidden, no layer, full 16-anchor slots, min mode), installed through
InstallRules. Each request carries a random 128-float vector that matches none of them,
so every rule is evaluated and every answer holds ``n`` evidence entries: the worst case
for the wire as well as for the engine.

- ``Enforce_latency_<n>_rules``: client-side latency of sequential calls (one grpcio
  connection, raw bytes so the client's own cost stays small; the response is parsed
  once, to check it). Targets: 100 rules p50 <= 3 ms and p99 <= 10 ms; 1,000 rules
  p50 <= 10 ms.
- ``Enforce_throughput_<n>_rules_8_clients``: 8 client threads, each with its own
  connection, calling back to back for a few windows; samples are requests/s per window,
  with the server's CPU per request (its process CPU clock) alongside. Reported, no
  target.
- ``Enforce_telemetry_on_off_p50_ratio_<n>_rules``: the cost of telemetry, two services
  side by side (``bench/enforce_telemetry.py``). Target >= 0.9.

The client runs in the benchmark process (grpcio releases the GIL while it waits), so on
a 2-core machine it competes with the server for CPU: the numbers are end to end, on
the same machine, as a co-located management plane would see them.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs
import numpy as np

from guardrefresh.model import (
    BLOCK_SHAPE,
    MAX_ANCHORS,
    PolicyType,
    Rule,
    RuleAnchors,
    rule_to_proto,
)
from guardrefresh.proto import rule_installation as pb

from ._data import Plan, Target, Workspace, entry
from .grpc_server import process_cpu_s, real_service

__all__ = ["run_enforce_grpc"]

logger = logging.getLogger(__name__)

TENANT = "bench-tenant"
ENFORCE = "/rule_installation.DataPlane/Enforce"
INSTALL = "/rule_installation.DataPlane/InstallRules"
INSTALL_BATCH = 200
CLIENTS = 8
#: (rules in scope, sequential calls, targets) of a full run.
LATENCY_RUNS: tuple[tuple[int, int, tuple[Target, ...]], ...] = (
    (100, 1000, (Target("median", "<=", 3.0, "ms"), Target("p99", "<=", 10.0, "ms"))),
    (1000, 300, (Target("median", "<=", 10.0, "ms"),)),
)
THROUGHPUT_RULES = 100
THROUGHPUT_WINDOWS = 5
THROUGHPUT_WINDOW_S = 2.0


def bench_rules(n: int, *, seed: int = 15) -> list[Rule]:
    """``n`` forbidden rules of :data:`TENANT`, no layer, random full anchor blocks."""
    rng = np.random.default_rng(seed)
    blocks = (rng.random((n, *BLOCK_SHAPE), dtype=np.float32) - 0.5).astype(np.float32)
    return [
        Rule(
            rule_id=f"enf-{i:06d}",
            family_id="",
            layer="",
            agent_id=TENANT,
            priority=i % 100,
            enabled=True,
            created_at_ms=1_700_000_000_000 + i,
            params={"rule_decision": "min", "notes": f"bench rule {i}"},
            anchors=RuleAnchors(blocks[i], (MAX_ANCHORS,) * 4),
            policy_type=PolicyType.FORBIDDEN,
            drift_threshold=0.0,
            modification_spec="",
            slice_weights=(1.0, 1.0, 1.0, 1.0),
            installed_by=TENANT,
            config_id="bench",
            owner="bench",
        )
        for i in range(n)
    ]


def enforce_request(seed: int, *, request_id: bool = True) -> bytes:
    """A serialized EnforceRequest: :data:`TENANT`'s intent and a random vector (matching
    none of :func:`bench_rules`); without ``request_id`` the service makes a new UUID."""
    rng = np.random.default_rng(seed)
    intent = (
        '{"id": "bench", "schemaVersion": "v1.3", "tenantId": "' + TENANT + '", '
        '"timestamp": 1700000000.0, "actor": {"id": "bench-agent", "type": "agent"}, '
        '"action": "read", "resource": {"type": "db"}, "data": {"sensitivity": []}, '
        '"risk": {"authn": "none"}}'
    )
    return bytes(
        pb.EnforceRequest(
            intent_event_json=intent,
            intent_vector=rng.standard_normal(128).astype(np.float32).tolist(),
            request_id=f"bench-{seed}" if request_id else "",
        )
    )


def _channel(port: int) -> Any:
    # A connection of its own per client, as separate management plane workers would have.
    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )


def _install(port: int, rules: Sequence[Rule]) -> None:
    with _channel(port) as channel:
        install = channel.unary_unary(INSTALL)
        for start in range(0, len(rules), INSTALL_BATCH):
            batch = rules[start : start + INSTALL_BATCH]
            request = pb.InstallRulesRequest(
                agent_id=TENANT, rules=[rule_to_proto(r) for r in batch], config_id="bench"
            )
            install(bytes(request), timeout=120)


def _check(raw: bytes, n: int) -> None:
    answer = pb.EnforceResponse.parse(raw)
    if answer.decision_name != "DENY" or answer.rules_evaluated != n or len(answer.evidence) != n:
        raise RuntimeError(
            f"Enforce answered {answer.decision_name} with {answer.rules_evaluated} rules "
            f"evaluated; expected DENY over {n}"
        )


def _latencies(port: int, n: int, calls: int) -> tuple[list[float], int]:
    requests = [enforce_request(seed) for seed in range(32)]
    with _channel(port) as channel:
        enforce = channel.unary_unary(ENFORCE)
        raw = enforce(requests[0], timeout=60)
        _check(raw, n)
        for request in requests[: min(len(requests), calls)]:  # warm-up
            enforce(request, timeout=60)
        latencies = []
        for i in range(calls):
            started = time.perf_counter()
            enforce(requests[i % len(requests)], timeout=60)
            latencies.append((time.perf_counter() - started) * 1000.0)
    return latencies, len(raw)


def _throughput(
    port: int, pid: int, n: int, windows: int, window_s: float
) -> tuple[list[float], list[float]]:
    requests = [enforce_request(seed) for seed in range(32)]
    channels = [_channel(port) for _ in range(CLIENTS)]
    stubs = [c.unary_unary(ENFORCE) for c in channels]
    try:
        for stub in stubs:  # connect and warm up every connection
            _check(stub(requests[0], timeout=60), n)
        counts = [0] * CLIENTS
        errors: list[str] = []
        stop = threading.Event()

        def client(index: int) -> None:
            stub = stubs[index]
            i = index
            while not stop.is_set():
                try:
                    stub(requests[i % len(requests)], timeout=60)
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code()}: {exc.details()}")
                    return
                counts[index] += 1
                i += 1

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
        for thread in threads:
            thread.start()
        rps: list[float] = []
        cpu_us: list[float] = []
        try:
            for _ in range(windows):
                before_count, before_cpu = sum(counts), process_cpu_s(pid)
                started = time.perf_counter()
                time.sleep(window_s)
                done = sum(counts) - before_count
                cpu = process_cpu_s(pid) - before_cpu
                wall = time.perf_counter() - started
                rps.append(done / wall)
                cpu_us.append(cpu / max(done, 1) * 1e6)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
        if errors:
            raise RuntimeError(f"{len(errors)} Enforce calls failed, first: {errors[0]}")
        return rps, cpu_us
    finally:
        for channel in channels:
            channel.close()


def run_enforce_grpc(ws: Workspace, plan: Plan) -> dict[str, Any]:
    log_dir = ws.fresh_dir("enforce-grpc-logs")
    results: dict[str, Any] = {}
    if plan.tiny:
        runs = [(20, 20, targets) for _, _, targets in LATENCY_RUNS[:1]] + [
            (50, 10, LATENCY_RUNS[1][2])
        ]
        throughput_rules, windows, window_s = 20, 2, 0.25
    else:
        runs = list(LATENCY_RUNS)
        throughput_rules, windows, window_s = (
            THROUGHPUT_RULES,
            THROUGHPUT_WINDOWS,
            THROUGHPUT_WINDOW_S,
        )
    sizes = sorted({n for n, _, _ in runs} | {throughput_rules})
    for n in sizes:
        path = ws.fresh_dir(f"enforce-grpc-{n}") / "warm_storage.bin"
        with real_service(path, log_dir) as server:
            _install(server.port, bench_rules(n))
            for size, calls, targets in runs:
                if size != n:
                    continue
                latencies, response_bytes = _latencies(server.port, n, calls)
                results[f"Enforce_latency_{n}_rules"] = entry(
                    parameters={
                        "rules_in_scope": n,
                        "evidence_entries": n,
                        "calls": calls,
                        "concurrency": 1,
                        "response_bytes": response_bytes,
                    },
                    unit="ms",
                    samples=latencies,
                    targets=targets,
                    applies=not plan.tiny,
                )
                logger.info(
                    "Enforce, %d rules: p50 %.2f ms, p99 %.2f ms",
                    n,
                    results[f"Enforce_latency_{n}_rules"]["median"],
                    results[f"Enforce_latency_{n}_rules"]["p99"],
                )
            if n == throughput_rules:
                rps, cpu_us = _throughput(server.port, server.pid, n, windows, window_s)
                results[f"Enforce_throughput_{n}_rules_{CLIENTS}_clients"] = entry(
                    parameters={
                        "rules_in_scope": n,
                        "clients": CLIENTS,
                        "windows": windows,
                        "window_s": window_s,
                    },
                    unit="req/s",
                    samples=rps,
                    extra={
                        "server_cpu_us_per_request": {
                            "median": statistics.median(cpu_us),
                            "per_window": cpu_us,
                        }
                    },
                )
                logger.info(
                    "Enforce, %d rules, %d clients: %.0f req/s, server %.0f us CPU/request",
                    n,
                    CLIENTS,
                    statistics.median(rps),
                    statistics.median(cpu_us),
                )
    # Deferred: that module builds on this one's helpers.
    from .enforce_telemetry import run_telemetry_ratio

    results.update(run_telemetry_ratio(ws, plan))
    return results
