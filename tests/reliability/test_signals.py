"""SIGTERM at random moments under mixed load: exit 0 within the grace period, nothing
acknowledged lost.

Twenty runs (two at a time), each on a fresh store seeded with 300 rules: the service
starts, three client threads send installs, lookups, stats, refresh-status calls and
RefreshRules, and SIGTERM arrives at a seeded random moment 0.05-1.0 s into the load.
The service must exit with code 0 within ``--shutdown-grace`` plus a small margin,
log no error, and a fresh load of its warm store must hold every install the clients
saw acknowledged (with the acknowledged content, or that of an install sent after it
whose answer the shutdown cut off).
"""

from __future__ import annotations

import concurrent.futures
import random
import re
import signal
import time
import types
from pathlib import Path

import attrs
from support.service import running_service

from .service import MixedLoad, build_store, read_store

RUNS = 20
PARALLEL = 2
GRACE_S = 2.0
#: Beyond the grace: the forced end's bounded waits (about 2.5 s) and a loaded machine.
MARGIN_S = 4.0
SEED_RULES = 300
_DRAINED = re.compile(r"Drained: (?P<in_flight>\d+) in flight at start")


@attrs.frozen
class Run:
    delay_s: float
    exit_s: float
    acked_installs: int
    calls: int
    in_flight_at_signal: int


def _one_run(workdir: Path, seed: int, modules: types.SimpleNamespace) -> Run:
    rng = random.Random(seed)
    warm = workdir / "data" / "warm_storage.bin"
    seeded = build_store(warm, SEED_RULES)
    args = ("--shutdown-grace", str(GRACE_S))
    with running_service(workdir, *args) as service:
        load = MixedLoad(
            modules,
            service.port,
            workers=3,
            seed=seed,
            strict=False,
            weights={"install": 4, "get": 4, "stats": 1, "refresh": 1, "status": 1},
            max_seconds=60,
        )
        with load:
            delay = rng.uniform(0.05, 1.0)
            time.sleep(delay)
            service.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = service.wait_exit(timeout=GRACE_S + MARGIN_S + 30)
            exit_s = time.monotonic() - signalled
        assert code == 0, service.log
        assert exit_s <= GRACE_S + MARGIN_S, f"exit took {exit_s:.2f}s:\n{service.log}"
        drained = service.find(_DRAINED)
        assert drained is not None, service.log

    report = load.report
    assert report.ok("InstallRules") >= 1, report.calls
    stored = read_store(warm)
    problems = load.check_store(stored)
    assert not problems, problems[:5]
    assert all(rule_id in stored for rule_id in seeded)
    return Run(delay, exit_s, len(report.acked), report.total, int(drained["in_flight"]))


def test_sigterm_at_random_moments_under_load(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        futures = [
            pool.submit(_one_run, tmp_path / f"run-{i}", 7000 + i, grpcio_modules)
            for i in range(RUNS)
        ]
        runs = [future.result() for future in futures]
    summary = {
        "runs": len(runs),
        "exit 0": len(runs),
        "slowest exit s": round(max(r.exit_s for r in runs), 2),
        "calls": sum(r.calls for r in runs),
        "rules acknowledged": sum(r.acked_installs for r in runs),
        "runs with RPCs in flight at SIGTERM": sum(r.in_flight_at_signal > 0 for r in runs),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"signals evidence: {summary}")
    assert len(runs) == RUNS
