"""gRPC benchmarks (issue 4), and the server and client processes they start.

- ``<Method>_server_cpu_us_per_request_<stack>``: server-process CPU time
  (the process's CPU-time clock, nanoseconds, all threads) divided by the
  requests one client run made, for GetRuleStats and GetRule (hot hit), on two
  stacks serving the same store with the same :class:`DataPlaneService` handlers:

  ``service``: this service's stack, :class:`GrpcHost` under trio-asyncio
  (drain listener, connection tracking, health, reflection), with the refresh
  service and the scheduler running, as ``guardrefresh.app`` wires them;
  ``plain_asyncio``: a bare ``grpclib.server.Server`` on ``asyncio.run``.

  Both servers run side by side. Each has its own client process (grpcio's
  asyncio API, one connection, a few concurrent streams, raw bytes so its own
  cost stays small) that warms up once and then makes one run of N calls per
  "go" line, so the CPU window covers only measured calls. Runs alternate
  between the stacks back to back (ABBA...): each pair is one ratio sample,
  taken on the same (shared, noisy) machine state.

  These machines are noisy at every time scale: two identical plain servers,
  both up for a whole run and unpinned, differed by 7 % over ten pairs (twice),
  and single pairs scatter by ±20 %. So the measurement is built to average that
  out rather than be fooled by it: short runs (pairs close in time), many pairs,
  and fresh server processes for each of a few rounds (start order
  alternating), so that one process's luck (memory layout, hash seed, where the
  scheduler put it) does not decide the result. With two or more CPUs, both
  servers share one CPU and both clients another (only one server works at a
  time), so the two stacks are placed alike and never compete with their own
  client. The ratio entries carry each round's median and a bootstrap 95 %
  interval for the median of all pairs.
- ``<Method>_cpu_ratio`` = plain CPU per request / service CPU per request and
  ``<Method>_rps_ratio`` = service requests/s / plain requests/s; target >= 0.9.
- ``RefreshRules_round_trip_<n>``: client-side latency of sequential
  RefreshRules calls against the real service process (``python -m
  guardrefresh``) over a store of ``n`` rules (unchanged refreshes).
- ``idle_cpu_percent``: CPU of that real service, idle after ready, over a
  window, in percent of one core.

Run as a module it is the server (``serve --mode service|plain_asyncio``) or
the client (``client --port P --method M ...``) of those measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import IO, Any

import attrs

from tests.support.service import ServiceProcess, running_service, service_env

from ._data import Plan, Target, Workspace, entry

__all__ = ["run_grpc"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE = "rule_installation.DataPlane"
METHODS = ("GetRuleStats", "GetRule")
STACKS = ("service", "plain_asyncio")
RATIO_TARGET = 0.9
REFRESH_P50_MS = 50.0
REFRESH_P99_MS = 100.0
REFRESH_SIZE = 10_000
IDLE_TARGET_PERCENT = 0.5
IDLE_FULL_WINDOW_S = 60.0
#: Distinct rule ids a GetRule run cycles through (all hot).
HOT_IDS = 100
_START_TIMEOUT_S = 180.0
_CLIENT_TIMEOUT_S = 600.0


# =========================================================================================
# The orchestrator (runs in the benchmark process; blocking subprocess work only)
# =========================================================================================


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds process ``pid`` has used so far, all its threads (ended ones too).

    Reads the process's CPU-time clock (nanoseconds; Linux lets any process read
    another's), so that runs of a fraction of a second measure well; falls back to
    ``/proc/PID/stat`` utime + stime (clock ticks, 10 ms) where that is refused.
    """
    try:
        return time.clock_gettime(_process_cpu_clock(pid))
    except OSError:
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def _process_cpu_clock(pid: int) -> int:
    # What clock_getcpuclockid(3) returns on Linux (MAKE_PROCESS_CPUCLOCK(pid,
    # CPUCLOCK_SCHED)); Python wraps it for threads only.
    return ((~pid) << 3) | 2


@attrs.frozen
class Placement:
    """The CPUs the benchmark's servers and clients may run on (None: anywhere)."""

    server_cpus: frozenset[int] | None = None
    client_cpus: frozenset[int] | None = None

    @classmethod
    def split(cls) -> Placement:
        """Servers on the last CPU this process may use, clients on the first."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls()
        return cls(frozenset(cpus[-1:]), frozenset(cpus[:1]))


def _pin(pid: int, cpus: frozenset[int] | None) -> None:
    """Keep every thread of process ``pid`` on ``cpus`` (threads it starts later inherit).

    Called right after the process is spawned, long before its Python start-up could
    start a thread, and again once it is ready, for any it did start. (Not a
    ``preexec_fn``: that is unsafe in a parent with threads, as the benchmark process
    may have.)
    """
    if cpus is None:
        return
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(tid), cpus)


def _env() -> dict[str, str]:
    """The environment of the processes started here: the repository importable, and no
    GUARDREFRESH_* settings of whoever runs the benchmark."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return service_env({"PYTHONPATH": path})


def _stop(proc: subprocess.Popen[str], *, what: str) -> int:
    """SIGTERM our child, wait (bounded), kill if it will not go. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored SIGTERM for 30 s; killing it", what, proc.pid)
            proc.kill()
            return proc.wait(timeout=30)
    return proc.returncode


@attrs.frozen
class _Server:
    proc: subprocess.Popen[str]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


def _read_line(stream: IO[str], proc: subprocess.Popen[str], what: str, log: Path) -> str:
    line = stream.readline()
    if not line:
        proc.wait(timeout=30)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(
            f"{what} exited ({proc.returncode}) without answering; log tail:\n{tail}"
        )
    return line


@contextlib.contextmanager
def bench_server(
    mode: str, path: Path, plan: Plan, log_dir: Path, *, cpus: frozenset[int] | None = None
) -> Iterator[_Server]:
    """``python -m bench.grpc_server serve``: ready once it printed its port."""
    log = log_dir / f"server-{mode}-{time.monotonic_ns()}.log"
    cmd = [
        sys.executable,
        "-m",
        "bench.grpc_server",
        "serve",
        "--mode",
        mode,
        "--warm-storage",
        str(path),
        "--hot-capacity",
        str(plan.hot_capacity),
    ]
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        _pin(proc.pid, cpus)
        assert proc.stdout is not None
        ready = json.loads(_read_line(proc.stdout, proc, f"{mode} server", log))
        _pin(proc.pid, cpus)
        yield _Server(proc, int(ready["port"]))
    finally:
        code = _stop(proc, what=f"{mode} server")
        if proc.stdout is not None:
            proc.stdout.close()
        if code not in (0, -signal.SIGTERM):
            logger.warning("%s server exited with %s; see %s", mode, code, log)


@contextlib.contextmanager
def real_service(path: Path, log_dir: Path, *extra_args: str) -> Iterator[ServiceProcess]:
    """``python -m guardrefresh --port 0 ... *extra_args``, started by the tests'
    launcher: ready once its ready file appears. Stopped with SIGTERM at the end (killed
    on an error)."""
    with running_service(
        log_dir,
        "--host", "127.0.0.1", "--log-level", "INFO", "--shutdown-grace", "2", *extra_args,
        warm_storage=path,
        env=_env(),
        check_log=False,
        start_timeout=_START_TIMEOUT_S,
    ) as service:  # fmt: skip
        yield service
        code = service.stop()
        if code != 0:
            logger.warning("the service exited with %s; log tail:\n%s", code, service.log[-3000:])


@attrs.frozen
class ClientRun:
    requests: int
    wall_s: float
    server_cpu_s: float
    client_cpu_s: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def server_cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e6


class _Client:
    """A client process for one server and one method; warmed up once, measured per run."""

    def __init__(
        self, proc: subprocess.Popen[str], server: _Server | ServiceProcess, method: str, log: Path
    ) -> None:
        self._proc = proc
        self._server = server
        self._method = method
        self._log = log

    def measure(self) -> ClientRun:
        """One run; the server's CPU is sampled right around it."""
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        before = process_cpu_s(self._server.pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result = json.loads(_read_line(proc.stdout, proc, "client", self._log))
        after = process_cpu_s(self._server.pid)
        if result["errors"]:
            raise RuntimeError(
                f"{self._method}: {result['errors']} failed calls, first: {result['first_error']}"
            )
        return ClientRun(
            requests=result["requests"],
            wall_s=result["wall_s"],
            server_cpu_s=after - before,
            client_cpu_s=result["client_cpu_s"],
            latencies_ms=result["latencies_ms"],
        )


@contextlib.contextmanager
def open_client(
    server: _Server | ServiceProcess,
    method: str,
    count: int,
    streams: int,
    log_dir: Path,
    *,
    warmup: int,
    cpus: frozenset[int] | None = None,
) -> Iterator[_Client]:
    """``python -m bench.grpc_server client``: connected and warmed up on entry."""
    log = log_dir / f"client-{method}-{time.monotonic_ns()}.log"
    cmd = [
        sys.executable,
        "-m",
        "bench.grpc_server",
        "client",
        "--port",
        str(server.port),
        "--method",
        method,
        "--count",
        str(count),
        "--streams",
        str(streams),
        "--warmup",
        str(warmup),
    ]
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        _pin(proc.pid, cpus)
        assert proc.stdin is not None and proc.stdout is not None
        if _read_line(proc.stdout, proc, "client", log).strip() != "warm":
            raise RuntimeError("client did not report 'warm'")
        _pin(proc.pid, cpus)
        yield _Client(proc, server, method, log)
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=_CLIENT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _bench_stacks(ws: Workspace, plan: Plan, log_dir: Path) -> dict[str, Any]:
    path = ws.store(plan.grpc_rules)
    placement = Placement.split()
    # rounds[method][stack][r]: the runs of round r.
    rounds: dict[str, dict[str, list[list[ClientRun]]]] = {
        method: {stack: [] for stack in STACKS} for method in METHODS
    }
    for round_ in range(plan.grpc_rounds):
        # Fresh processes each round, started in alternating order; within a round
        # both servers stay up and runs alternate between them back to back.
        order = STACKS if round_ % 2 == 0 else tuple(reversed(STACKS))
        with contextlib.ExitStack() as stack_of_servers:
            servers = {
                stack: stack_of_servers.enter_context(
                    bench_server(stack, path, plan, log_dir, cpus=placement.server_cpus)
                )
                for stack in order
            }
            for method in METHODS:
                runs = _alternate(servers, order, method, plan, log_dir, placement)
                for stack in STACKS:
                    rounds[method][stack].append(runs[stack])
    results: dict[str, Any] = {}
    for method in METHODS:
        for stack in STACKS:
            these = [run for runs in rounds[method][stack] for run in runs]
            results[f"{method}_server_cpu_us_per_request_{stack}"] = entry(
                parameters={
                    "stack": stack,
                    "store_rules": plan.grpc_rules,
                    "requests_per_run": plan.grpc_requests[method],
                    "runs": len(these),
                    "rounds": plan.grpc_rounds,
                    "concurrent_streams": plan.grpc_streams,
                    "client": "separate process, grpcio aio, one connection, loopback",
                    "server_cpus": _cpus(placement.server_cpus),
                    "client_cpus": _cpus(placement.client_cpus),
                },
                unit="us",
                samples=[run.server_cpu_us_per_request for run in these],
                extra={
                    "requests_per_s": [run.rps for run in these],
                    "requests_per_s_median": _median([run.rps for run in these]),
                    "client_cpu_us_per_request_median": _median(
                        [run.client_cpu_s / run.requests * 1e6 for run in these]
                    ),
                    "latency_ms_p50": _median([_median(run.latencies_ms) for run in these]),
                },
            )
        pairs_by_round = [
            list(zip(service, plain, strict=True))
            for service, plain in zip(
                rounds[method]["service"], rounds[method]["plain_asyncio"], strict=True
            )
        ]
        ratios = {
            "cpu": (
                "plain_asyncio CPU/request / service CPU/request",
                lambda s, p: p.server_cpu_us_per_request / s.server_cpu_us_per_request,
            ),
            "rps": (
                "service requests/s / plain_asyncio requests/s",
                lambda s, p: s.rps / p.rps,
            ),
        }
        for kind, (meaning, ratio) in ratios.items():
            by_round = [[ratio(s, p) for s, p in pairs] for pairs in pairs_by_round]
            samples = [r for one_round in by_round for r in one_round]
            results[f"{method}_{kind}_ratio"] = entry(
                parameters={
                    "method": method,
                    "pairs": len(samples),
                    "rounds": plan.grpc_rounds,
                    "paired": "back-to-back runs; fresh server processes each round",
                    "ratio": meaning,
                },
                unit="ratio",
                samples=samples,
                targets=[Target("median", ">=", RATIO_TARGET, "ratio")],
                applies=not plan.tiny,
                extra={
                    "values": samples,
                    "round_medians": [_median(one_round) for one_round in by_round],
                    "median_95ci": _bootstrap_median_interval(samples),
                },
            )
    return results


def _alternate(
    servers: dict[str, _Server],
    order: Sequence[str],
    method: str,
    plan: Plan,
    log_dir: Path,
    placement: Placement,
) -> dict[str, list[ClientRun]]:
    """``plan.grpc_pairs`` runs of ``method`` on each server, alternating ABBA."""
    count = plan.grpc_requests[method]
    runs: dict[str, list[ClientRun]] = {stack: [] for stack in servers}
    with contextlib.ExitStack() as stack_of_clients:
        clients = {
            stack: stack_of_clients.enter_context(
                open_client(
                    servers[stack],
                    method,
                    count,
                    plan.grpc_streams,
                    log_dir,
                    warmup=max(20, count // 2),
                    cpus=placement.client_cpus,
                )
            )
            for stack in order
        }
        for pair in range(plan.grpc_pairs):
            for stack in order if pair % 2 == 0 else tuple(reversed(order)):
                run = clients[stack].measure()
                runs[stack].append(run)
                logger.debug(
                    "%s on %s: %.0f req/s, server %.0f us CPU/request",
                    method,
                    stack,
                    run.rps,
                    run.server_cpu_us_per_request,
                )
    return runs


def _cpus(cpus: frozenset[int] | None) -> list[int] | str:
    return "any" if cpus is None else sorted(cpus)


def _bootstrap_median_interval(
    samples: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> list[float]:
    """A 95 % percentile-bootstrap interval for the median (seeded: reproducible)."""
    rng = random.Random(seed)
    n = len(samples)
    medians = sorted(_median(rng.choices(samples, k=n)) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


def _bench_real_service(ws: Workspace, plan: Plan, log_dir: Path) -> dict[str, Any]:
    n = plan.grpc_rules
    path = ws.clone(n)
    with real_service(path, log_dir) as server:
        time.sleep(1.0)  # let the start-up settle (logging, first scheduler plan)
        before = process_cpu_s(server.pid)
        started = time.monotonic()
        time.sleep(plan.idle_window_s)
        idle_cpu = process_cpu_s(server.pid) - before
        window = time.monotonic() - started
        with open_client(
            server,
            "RefreshRules",
            plan.refresh_rpc_calls,
            1,
            log_dir,
            warmup=max(2, plan.refresh_rpc_calls // 20),
        ) as client:
            refresh = client.measure()
    idle_percent = idle_cpu / window * 100.0
    return {
        f"RefreshRules_round_trip_{n}": entry(
            parameters={
                "store_rules": n,
                "calls": plan.refresh_rpc_calls,
                "concurrency": 1,
                "server": "python -m guardrefresh (real service process)",
                "measures": "client-side latency of RefreshRules (all families, store unchanged)",
            },
            unit="ms",
            samples=refresh.latencies_ms,
            targets=[
                Target("median", "<=", REFRESH_P50_MS, "ms"),
                Target("p99", "<=", REFRESH_P99_MS, "ms"),
            ],
            applies=n == REFRESH_SIZE,
            extra={"server_cpu_ms_per_call": refresh.server_cpu_s / refresh.requests * 1000.0},
        ),
        "idle_cpu_percent": entry(
            parameters={
                "store_rules": n,
                "window_s": round(window, 3),
                "server": "python -m guardrefresh --port 0 (defaults: scheduler on, 6 h)",
                "cpu_tick_s": 1 / _clock_ticks(),
                "measures": "server CPU over the window after ready, % of one core",
            },
            unit="percent of one core",
            samples=[idle_percent],
            targets=[Target("median", "<=", IDLE_TARGET_PERCENT, "percent")],
            applies=plan.idle_window_s >= IDLE_FULL_WINDOW_S,
            extra={"idle_cpu_s": idle_cpu},
        ),
    }


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def run_grpc(ws: Workspace, plan: Plan) -> dict[str, Any]:
    """Every gRPC benchmark; the section of the results document."""
    log_dir = ws.root / "logs"
    log_dir.mkdir(exist_ok=True)
    results: dict[str, Any] = {}
    results.update(_bench_stacks(ws, plan, log_dir))
    results.update(_bench_real_service(ws, plan, log_dir))
    return results


# =========================================================================================
# The server process
# =========================================================================================


def _announce(port: int, **info: Any) -> None:
    sys.stdout.write(json.dumps({"port": port, "pid": os.getpid(), **info}) + "\n")
    sys.stdout.flush()


async def _serve_service(path: Path, hot_capacity: int) -> None:
    """GrpcHost + DataPlaneService under trio-asyncio, wired as guardrefresh.app does."""
    import trio

    from guardrefresh.bridge import Bridge
    from guardrefresh.refresh import (
        RefreshScheduler,
        RefreshTrigger,
        SchedulerConfig,
        open_refresh_service,
    )
    from guardrefresh.server import DataPlaneService, GrpcHost, open_asyncio_loop

    bridge = await Bridge.open(path, hot_capacity=hot_capacity)
    try:
        async with open_asyncio_loop(), open_refresh_service(bridge) as refresher:
            await refresher.refresh(trigger=RefreshTrigger.STARTUP)
            scheduler = RefreshScheduler(refresher, SchedulerConfig())
            host = GrpcHost([DataPlaneService(bridge, refresher, scheduler)])
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(scheduler.run)
                    port = await nursery.start(host.serve)
                    host.set_serving(True)
                    _announce(port, hot=len(bridge.cache))
                    async for _signum in signals:
                        await host.drain(0.0)
                        scheduler.stop()
                        nursery.cancel_scope.cancel()
                        break
    finally:
        bridge.close()


async def _serve_plain_asyncio(path: Path, hot_capacity: int) -> None:
    """The same DataPlaneService handlers on a bare grpclib Server, plain asyncio."""
    import grpclib.server

    from guardrefresh.bridge import Bridge
    from guardrefresh.server import CompiledProtoCodec, DataPlaneService
    from guardrefresh.storage import WarmStore

    store = WarmStore(path)
    table = store.open()
    bridge = Bridge(store, table, hot_capacity=hot_capacity)
    # What the service's warm-up refresh makes hot: the first rules in storage order.
    bridge.cache.replace((ref.rule_id, ref) for ref in islice(table.iter_refs(), hot_capacity))
    # Only reads are measured here: they touch neither the refresher nor the scheduler.
    dataplane = DataPlaneService(bridge, None, None)  # type: ignore[arg-type]
    # The service's codec too: the comparison is of the hosting, not of the encoding.
    server = grpclib.server.Server([dataplane], codec=CompiledProtoCodec())
    await server.start("127.0.0.1", 0)
    try:
        sockets = server._server.sockets  # grpclib keeps its asyncio.Server private
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        _announce(sockets[0].getsockname()[1], hot=len(bridge.cache))
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        bridge.close()


def serve_main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    path = Path(args.warm_storage)
    if args.mode == "service":
        import trio

        trio.run(_serve_service, path, args.hot_capacity)
    else:
        asyncio.run(_serve_plain_asyncio(path, args.hot_capacity))
    return 0


# =========================================================================================
# The client process
# =========================================================================================


def _requests(method: str) -> tuple[str, list[bytes]]:
    from guardrefresh.proto import rule_installation as pb

    if method == "GetRuleStats":
        return f"/{SERVICE}/GetRuleStats", [bytes(pb.GetRuleStatsRequest())]
    if method == "GetRule":
        ids = [f"rule-{i:08d}" for i in range(HOT_IDS)]
        return f"/{SERVICE}/GetRule", [bytes(pb.GetRuleRequest(rule_id=i)) for i in ids]
    if method == "RefreshRules":
        return f"/{SERVICE}/RefreshRules", [bytes(pb.RefreshRulesRequest())]
    raise ValueError(f"unknown method {method!r}")


def _check(method: str, raw: bytes) -> None:
    """The first answer must be what the benchmark claims to measure."""
    from guardrefresh.proto import rule_installation as pb

    if method == "GetRuleStats":
        stats = pb.GetRuleStatsResponse.parse(raw)
        if stats.total_rules <= 0:
            raise RuntimeError(f"GetRuleStats reports {stats.total_rules} rules")
    elif method == "GetRule":
        rule = pb.GetRuleResponse.parse(raw)
        if not rule.found or rule.tier != "hot" or rule.rule is None:
            raise RuntimeError(f"GetRule was not a hot hit: found={rule.found} tier={rule.tier!r}")
        anchors = rule.rule.anchors
        if anchors is None or len(anchors.action_anchors) != 16:
            raise RuntimeError("GetRule answered a rule without full anchors")
    else:
        refreshed = pb.RefreshRulesResponse.parse(raw)
        if not refreshed.success:
            raise RuntimeError(f"RefreshRules failed: {refreshed.message}")


async def _client(args: argparse.Namespace) -> None:
    import grpc  # type: ignore[import-untyped]  # no stubs; only the client uses it

    path, requests = _requests(args.method)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        call = channel.unary_unary(path)
        _check(args.method, await call(requests[0], timeout=60))
        errors: list[str] = []

        async def calls(total: int) -> list[float]:
            latencies: list[float] = []
            next_index = 0

            async def worker() -> None:
                nonlocal next_index
                while next_index < total:
                    i = next_index
                    next_index += 1
                    started = time.perf_counter()
                    try:
                        await call(requests[i % len(requests)], timeout=60)
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code()}: {exc.details()}")
                    latencies.append((time.perf_counter() - started) * 1000.0)

            await asyncio.gather(*(worker() for _ in range(args.streams)))
            return latencies

        await calls(args.warmup)
        if errors:
            raise RuntimeError(f"{len(errors)} warm-up calls failed, first: {errors[0]}")
        _say("warm")
        loop = asyncio.get_running_loop()
        # One run per "go" line; anything else (or EOF) ends the client.
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
            errors.clear()
            cpu_before = time.process_time()
            started = time.perf_counter()
            latencies = await calls(args.count)
            wall = time.perf_counter() - started
            result = {
                "requests": len(latencies),
                "wall_s": wall,
                "client_cpu_s": time.process_time() - cpu_before,
                "latencies_ms": latencies,
                "errors": len(errors),
                "first_error": errors[0] if errors else "",
            }
            _say(json.dumps(result))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def client_main(args: argparse.Namespace) -> int:
    asyncio.run(_client(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a store on 127.0.0.1:0; print the port")
    serve.add_argument("--mode", choices=STACKS, required=True)
    serve.add_argument("--warm-storage", required=True)
    serve.add_argument("--hot-capacity", type=int, default=10_000)
    client = commands.add_parser("client", help="call one method; print a JSON summary")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--method", choices=(*METHODS, "RefreshRules"), required=True)
    client.add_argument("--count", type=int, required=True)
    client.add_argument("--streams", type=int, default=4)
    client.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_main(args)
    return client_main(args)


if __name__ == "__main__":
    sys.exit(main())
