"""Fleet mode (issue 18): three ``python -m guardrefresh --replication`` replicas and a
PostgreSQL server on this machine.

The server is the test suite's throwaway one (``tests/pg_support.py``: Debian's
PostgreSQL binaries, a temporary cluster, fsync off); the group is skipped, with the
reason in the document, when they are not installed.

- ``write_visible_on_all_replicas``: one InstallRules of one rule on a replica (round
  robin), then GetRule on every replica until all three answer; ms from the call to the
  last answer. Target p99 <= 50 ms.
- ``install_10000_rules_batches_100``: 10,000 rules (full 16-anchor slots, as the
  management plane sends them) in InstallRules batches of 100, one writer thread per
  replica; rules/s from the first call to the last acknowledgement. Target >= 2,000.
  ``converged_after_last_ack_ms`` (alongside) is how long after the last acknowledgement
  every replica had applied every write; target <= 1,000 ms.
- ``catch_up_5000_changes``: a replica paused (SIGSTOP) while 5,000 changes are written
  through another, then resumed (SIGCONT); seconds until it has applied them all.
  Target <= 2 s.
- ``full_resync_<n>_rules``: ``n`` rules written straight into the database (batches of
  1,000 through the service's own write statement), the tombstone horizon raised past
  version 0, and a new replica started on an empty store: it must resynchronise; the
  replica's own measurement (``Fleet resync done: ... in X ms``, reading included).
  Target <= 30 s for 100,000 rules.
- ``enforce_rps_3_over_1``: Enforce requests/s of 6 client threads against one replica,
  then spread over three; the ratio. Reported, no target: on a 2-core machine the three
  replicas share the same two cores (expect about 1); with a core or more per replica
  it approaches 3, as no request touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import grpc  # type: ignore[import-untyped]  # no stubs

from guardrefresh.model import rule_to_proto
from guardrefresh.proto import rule_installation as pb
from tests.support.service import ServiceError, ServiceProcess

from ._data import Plan, Target, Workspace, entry
from .enforce_grpc import TENANT, bench_rules, enforce_request
from .grpc_server import REPO_ROOT, _env

__all__ = ["run_fleet"]

logger = logging.getLogger(__name__)

INSTALL = "/rule_installation.DataPlane/InstallRules"
GET_RULE = "/rule_installation.DataPlane/GetRule"
STATUS = "/rule_installation.DataPlane/GetRefreshStatus"
ENFORCE = "/rule_installation.DataPlane/Enforce"
_IN_SYNC = re.compile(r"Fleet replica in sync at version (\d+)")
_RESYNC_DONE = re.compile(r"Fleet resync done: (\d+) rules at version \d+ in (\d+) ms")
_START_TIMEOUT_S = 120.0


def _pg_support() -> Any:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        import pg_support
    finally:
        sys.path.remove(str(REPO_ROOT / "tests"))
    return pg_support


@attrs.define
class _Replica:
    process: ServiceProcess
    channel: Any

    @property
    def port(self) -> int:
        return self.process.port

    def call(self, path: str, request: bytes, timeout: float = 120.0) -> bytes:
        result: bytes = self.channel.unary_unary(path)(request, timeout=timeout)
        return result

    def status(self) -> pb.ReplicationStatus:
        raw = self.call(STATUS, bytes(pb.GetRefreshStatusRequest()))
        replication = pb.GetRefreshStatusResponse.parse(raw).replication
        assert replication is not None
        return replication


def _channel(port: int) -> Any:
    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )


@contextlib.contextmanager
def _replica(directory: Path, dsn: str) -> Iterator[_Replica]:
    """A replica started by the tests' launcher; yielded once it is in sync."""
    directory.mkdir(parents=True, exist_ok=True)
    process = ServiceProcess(
        directory,
        "--replication", dsn, "--shutdown-grace", "2", "--log-level", "INFO",
        warm_storage=directory / "warm_storage.bin",
        env=_env(),
    )  # fmt: skip
    channel = None
    try:
        process.wait_ready(timeout=_START_TIMEOUT_S)
        process.wait_for_log(_IN_SYNC, timeout=_START_TIMEOUT_S)
        channel = _channel(process.port)
        yield _Replica(process, channel)
    finally:
        if channel is not None:
            channel.close()
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)  # in case it was left paused
            with contextlib.suppress(ServiceError):
                code = process.stop(timeout=30)
                if code != 0:
                    logger.warning(
                        "a replica exited with %s; log tail:\n%s", code, process.log[-3000:]
                    )
        process.close()


#: The writing benchmarks' rules belong to this agent, so Enforce (tenant TENANT) sees
#: only its own 100 rules, whatever was written before.
WRITER = "bench-writer"


def _install_request(rules: Sequence[Any], agent: str = WRITER) -> bytes:
    rules = [attrs.evolve(r, agent_id=agent, installed_by=agent) for r in rules]
    return bytes(
        pb.InstallRulesRequest(
            agent_id=agent, rules=[rule_to_proto(r) for r in rules], config_id="bench"
        )
    )


def _installed_version(raw: bytes) -> int:
    return pb.InstallRulesResponse.parse(raw).bridge_version


def _wait_applied(replicas: Sequence[_Replica], version: int, timeout: float = 120.0) -> float:
    """Seconds until every replica has applied ``version``."""
    started = time.perf_counter()
    for replica in replicas:
        while replica.status().local_version < version:
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"replica on port {replica.port} never reached {version}")
            time.sleep(0.002)
    return time.perf_counter() - started


# -- the measurements ------------------------------------------------------------------


def _write_visible(replicas: Sequence[_Replica], calls: int) -> list[float]:
    rules = bench_rules(calls, seed=18)
    samples = []
    for i, rule in enumerate(rules):
        writer = replicas[i % len(replicas)]
        lookup = bytes(pb.GetRuleRequest(rule_id=rule.rule_id))
        started = time.perf_counter()
        writer.call(INSTALL, _install_request([rule]))
        for replica in replicas:
            while True:
                try:
                    replica.call(GET_RULE, lookup)
                    break
                except grpc.RpcError as exc:
                    if exc.code() is not grpc.StatusCode.NOT_FOUND:
                        raise
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _bulk_install(replicas: Sequence[_Replica], total: int, batch: int) -> tuple[float, float]:
    """(rules/s until the last acknowledgement, seconds from it until all converged)."""
    rules = bench_rules(total, seed=1800)
    for i, rule in enumerate(rules):
        rules[i] = attrs.evolve(rule, rule_id=f"bulk-{i:06d}")
    requests = [_install_request(rules[i : i + batch]) for i in range(0, total, batch)]
    versions: list[int] = []
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for request in requests[k :: len(replicas)]:
                versions.append(_installed_version(replicas[k].call(INSTALL, request)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(len(replicas))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"bulk install failed: {errors[0]!r}")
    converged = _wait_applied(replicas, max(versions))
    return total / elapsed, converged


def _catch_up(replicas: Sequence[_Replica], changes: int, batch: int) -> float:
    paused, writer = replicas[-1], replicas[0]
    rules = [attrs.evolve(r, rule_id=f"catch-{i:06d}") for i, r in enumerate(bench_rules(changes))]
    paused.process.send_signal(signal.SIGSTOP)
    try:
        version = 0
        for i in range(0, changes, batch):
            version = _installed_version(
                writer.call(INSTALL, _install_request(rules[i : i + batch]))
            )
    finally:
        paused.process.send_signal(signal.SIGCONT)
    started = time.perf_counter()
    _wait_applied([paused], version)
    return time.perf_counter() - started


def _enforce_rps(
    replicas: Sequence[_Replica], clients: int, windows: int, window_s: float
) -> float:
    requests = [enforce_request(seed) for seed in range(32)]
    channels = [_channel(replicas[k % len(replicas)].port) for k in range(clients)]
    stubs = [channel.unary_unary(ENFORCE) for channel in channels]
    try:
        for stub in stubs:
            stub(requests[0], timeout=60)
        counts = [0] * clients
        stop = threading.Event()

        def client(k: int) -> None:
            i = k
            while not stop.is_set():
                stubs[k](requests[i % len(requests)], timeout=60)
                counts[k] += 1
                i += 1

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        for thread in threads:
            thread.start()
        rates = []
        try:
            for _ in range(windows):
                before, started = sum(counts), time.perf_counter()
                time.sleep(window_s)
                rates.append((sum(counts) - before) / (time.perf_counter() - started))
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
        return statistics.median(rates)
    finally:
        for channel in channels:
            channel.close()


def _seed_database(dsn: str, n: int, batch: int = 1000) -> None:
    """``n`` rules written with the service's own write statement, then the horizon
    raised past version 0 (as if old tombstones had been collected)."""
    import asyncpg  # type: ignore[import-untyped]

    from guardrefresh.replication import RULES_MIGRATIONS, apply_migrations, encode_rules
    from guardrefresh.replication._sql import write_install

    async def seed() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await apply_migrations(connection, RULES_MIGRATIONS)
            for start in range(0, n, batch):
                rules = [
                    attrs.evolve(
                        r, rule_id=f"resync-{start + i:07d}", agent_id=WRITER, installed_by=WRITER
                    )
                    for i, r in enumerate(bench_rules(min(batch, n - start), seed=start))
                ]
                await write_install(connection, WRITER, encode_rules(rules))
            await connection.execute("UPDATE guardrefresh_meta SET value = 1")
        finally:
            await connection.close()

    asyncio.run(seed())


def run_fleet(ws: Workspace, plan: Plan) -> dict[str, Any]:
    pg_support = _pg_support()
    bin_dir = pg_support.find_postgres_bin()
    if bin_dir is None:
        logger.warning("fleet: skipped: %s", pg_support.MISSING_REASON)
        return {"skipped": pg_support.MISSING_REASON}
    tiny = plan.tiny
    visible_calls = 20 if tiny else 300
    bulk_total, bulk_batch = (300, 100) if tiny else (10_000, 100)
    catch_up = 200 if tiny else 5000
    resync_n = max(plan.sizes)
    windows, window_s = (2, 0.25) if tiny else (5, 2.0)
    root = ws.fresh_dir("fleet")
    server = pg_support.PostgresServer.create(bin_dir)
    results: dict[str, Any] = {}
    try:
        dsn = server.dsn(server.create_database("fleet_bench"))
        with contextlib.ExitStack() as stack:
            replicas = [stack.enter_context(_replica(root / f"r{k}", dsn)) for k in range(3)]
            samples = _write_visible(replicas, visible_calls)
            results["write_visible_on_all_replicas"] = entry(
                parameters={"replicas": 3, "calls": visible_calls, "rules_per_call": 1},
                unit="ms",
                samples=samples,
                targets=(Target("p99", "<=", 50.0, "ms"),),
                applies=not tiny,
            )
            rate, converged = _bulk_install(replicas, bulk_total, bulk_batch)
            results[f"install_{bulk_total}_rules_batches_{bulk_batch}"] = entry(
                parameters={"replicas": 3, "rules": bulk_total, "batch": bulk_batch, "writers": 3},
                unit="rules/s",
                samples=[rate],
                targets=(Target("median", ">=", 2000.0, "rules/s"),),
                applies=not tiny,
                extra={"converged_after_last_ack_ms": converged * 1000},
            )
            seconds = _catch_up(replicas, catch_up, 100)
            results[f"catch_up_{catch_up}_changes"] = entry(
                parameters={"changes": catch_up, "batch": 100},
                unit="s",
                samples=[seconds],
                targets=(Target("median", "<=", 2.0, "s"),),
                applies=not tiny,
            )
            enforce_rules = [
                attrs.evolve(r, rule_id=f"enf-{i:04d}") for i, r in enumerate(bench_rules(100))
            ]
            replicas[0].call(INSTALL, _install_request(enforce_rules, TENANT))
            _wait_applied(replicas, replicas[0].status().local_version)
            one = _enforce_rps(replicas[:1], 6, windows, window_s)
            three = _enforce_rps(replicas, 6, windows, window_s)
            results["enforce_rps_3_over_1"] = entry(
                parameters={
                    "clients": 6,
                    "rules_in_scope": 100,
                    "windows": windows,
                    "window_s": window_s,
                },
                unit="ratio",
                samples=[three / one],
                extra={"rps_1_replica": one, "rps_3_replicas": three},
            )
        # The full resync: a database of its own, seeded directly.
        resync_dsn = server.dsn(server.create_database("fleet_resync"))
        _seed_database(resync_dsn, resync_n)
        with _replica(root / "resync", resync_dsn) as fresh:
            match = fresh.process.wait_for_log(_RESYNC_DONE, timeout=_START_TIMEOUT_S)
            assert int(match.group(1)) == resync_n
            results[f"full_resync_{resync_n}_rules"] = entry(
                parameters={"rules": resync_n},
                unit="s",
                samples=[int(match.group(2)) / 1000],
                targets=(Target("median", "<=", 30.0, "s"),),
                applies=not tiny and resync_n >= 100_000,
            )
    finally:
        server.destroy()
    for name, result in results.items():
        logger.info("fleet %s: median %.3f %s", name, result["median"], result["unit"])
    return results
