"""What telemetry costs Enforce over gRPC (issue 16), part of the ``enforce_grpc`` group.

Two ``python -m guardrefresh`` processes run side by side, one recording every Enforce
call (the default) and one with ``--no-telemetry``, each on its own fresh store with the
same ``n`` rules of one tenant (:func:`bench.enforce_grpc.bench_rules`: nothing
matches, every rule is evaluated, every session holds ``n`` evaluated rules). Requests
carry no ``request_id``, so every call is a new session, as real traffic is.

One client connection per service, both warmed up first. Then rounds: in each round one
run of sequential calls against each service, back to back, the order alternating from
round to round (on, off / off, on / ...), so both see the same machine state. Each round
gives one ratio sample: p50 latency with telemetry off ÷ p50 with it on, i.e. the
speed with telemetry on as a fraction of the speed without it (1.0 = no cost). Target:
median over the rounds >= 0.9. The server CPU per request of both processes (all threads,
so the telemetry writer's thread is included) is reported alongside.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs

from guardrefresh.proto import rule_installation as pb

from ._data import Plan, Target, Workspace, entry
from .enforce_grpc import ENFORCE, _channel, _check, _install, bench_rules, enforce_request
from .grpc_server import _bootstrap_median_interval, process_cpu_s, real_service

__all__ = ["TELEMETRY_RATIO_TARGET", "run_telemetry_ratio"]

logger = logging.getLogger(__name__)

QUERY_TELEMETRY = "/rule_installation.DataPlane/QueryTelemetry"
MODES = ("on", "off")
TELEMETRY_RATIO_TARGET = Target("median", ">=", 0.9, "ratio")
#: (rules in scope, rounds, calls per run, warm-up calls) of a full run and of --tiny.
FULL = (100, 30, 100, 100)
TINY = (20, 2, 10, 5)


def _run(stub: Any, requests: list[bytes], calls: int, pid: int) -> tuple[float, float]:
    """``calls`` sequential calls: their p50 latency (ms) and the server's CPU per call (µs)."""
    latencies = []
    cpu_before = process_cpu_s(pid)
    for i in range(calls):
        started = time.perf_counter()
        stub(requests[i % len(requests)], timeout=60)
        latencies.append((time.perf_counter() - started) * 1000.0)
    cpu = process_cpu_s(pid) - cpu_before
    return statistics.median(latencies), cpu / calls * 1e6


def _check_recording(channel_on: Any, channel_off: Any, calls: int) -> int:
    """Sessions the telemetry-on service recorded (waits for its batch window); checks
    that the other one records nothing."""
    request = bytes(pb.QueryTelemetryRequest(limit=1))
    try:
        channel_off.unary_unary(QUERY_TELEMETRY)(request, timeout=30)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
    else:
        raise RuntimeError("the --no-telemetry service answered QueryTelemetry")
    query = channel_on.unary_unary(QUERY_TELEMETRY)
    deadline = time.monotonic() + 10.0
    while True:
        total = int(pb.QueryTelemetryResponse.parse(query(request, timeout=30)).total_count)
        if total >= calls or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if total < calls:
        raise RuntimeError(f"the telemetry service recorded {total} sessions of {calls} calls")
    return total


def run_telemetry_ratio(ws: Workspace, plan: Plan) -> dict[str, Any]:
    n, rounds, calls, warmup = TINY if plan.tiny else FULL
    log_dir = ws.fresh_dir("enforce-telemetry-logs")
    rules = bench_rules(n)
    requests = [enforce_request(seed, request_id=False) for seed in range(32)]
    with contextlib.ExitStack() as stack:
        servers = {}
        for mode in MODES:
            path = ws.fresh_dir(f"enforce-telemetry-{mode}") / "warm_storage.bin"
            args = () if mode == "on" else ("--no-telemetry",)
            servers[mode] = stack.enter_context(real_service(path, log_dir, *args))
            _install(servers[mode].port, rules)
        channels = {mode: stack.enter_context(_channel(servers[mode].port)) for mode in MODES}
        stubs = {mode: channels[mode].unary_unary(ENFORCE) for mode in MODES}
        for mode in MODES:
            _check(stubs[mode](requests[0], timeout=60), n)
            for i in range(warmup):
                stubs[mode](requests[i % len(requests)], timeout=60)
        p50: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu_us: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_ in range(rounds):
            for mode in MODES if round_ % 2 == 0 else tuple(reversed(MODES)):
                latency, cpu = _run(stubs[mode], requests, calls, servers[mode].pid)
                p50[mode].append(latency)
                cpu_us[mode].append(cpu)
        total_calls = 1 + warmup + rounds * calls
        recorded = _check_recording(channels["on"], channels["off"], total_calls)
    ratios = [off / on for on, off in zip(p50["on"], p50["off"], strict=True)]
    name = f"Enforce_telemetry_on_off_p50_ratio_{n}_rules"
    result = entry(
        parameters={
            "rules_in_scope": n,
            "rounds": rounds,
            "calls_per_run": calls,
            "concurrency": 1,
            "ratio": "p50 latency with --no-telemetry / p50 latency with telemetry on",
            "paired": "one run on each service per round, back to back, order alternating",
        },
        unit="ratio",
        samples=ratios,
        targets=[TELEMETRY_RATIO_TARGET],
        applies=not plan.tiny,
        extra={
            "values": ratios,
            "median_95ci": _bootstrap_median_interval(ratios),
            "p50_ms": {mode: statistics.median(p50[mode]) for mode in MODES},
            "server_cpu_us_per_request": {mode: statistics.median(cpu_us[mode]) for mode in MODES},
            "sessions_recorded": recorded,
        },
    )
    logger.info(
        "Enforce, %d rules, telemetry on / off: p50 %.3f / %.3f ms, ratio %.3f; "
        "server CPU %.0f / %.0f us/request",
        n,
        result["p50_ms"]["on"],
        result["p50_ms"]["off"],
        result["median"],
        result["server_cpu_us_per_request"]["on"],
        result["server_cpu_us_per_request"]["off"],
    )
    return {name: result}
