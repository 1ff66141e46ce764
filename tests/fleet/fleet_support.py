"""Helpers of the fleet suite: replicas as real ``python -m guardrefresh --replication``
processes, grpcio calls, and the comparison of each replica's warm storage with the
fleet database.

Everything blocks (subprocesses, grpcio, psql); every wait is bounded and every process
is killed and reaped on the way out.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import signal
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from grpcio_support import DataPlaneClient
from pg_support import PostgresServer
from reliability.service import pb_rule
from support.service import ServiceProcess
from support.waiting import wait_until

from guardrefresh.storage import WarmStore

IN_SYNC = re.compile(r"Fleet replica in sync at version (\d+)")
TENANT = "tenant-a"


@attrs.define
class Replica:
    """One replica process, its grpcio client and where its warm storage lives."""

    name: str
    workdir: Path
    args: tuple[str, ...]
    process: ServiceProcess
    client: DataPlaneClient | None = None

    @property
    def warm_storage(self) -> Path:
        return self.process.warm_storage

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the replica listens and has synced with the fleet."""
        self.process.wait_ready()
        self.process.wait_for_log(IN_SYNC, timeout=timeout)

    def connect(self, modules: types.SimpleNamespace) -> DataPlaneClient:
        if self.client is not None:
            self.client.close()
        self.client = DataPlaneClient(modules, self.process.port)
        return self.client

    def serving(self) -> bool:
        """Whether grpc.health.v1 Check answers SERVING (the whole server)."""
        assert self.client is not None
        outcome = self.client.raw_path("/grpc.health.v1.Health/Check", b"", deadline_s=5.0)
        assert outcome.ok, outcome.details
        # HealthCheckResponse: field 1 (status) as a varint; SERVING = 1, NOT_SERVING = 2.
        return bytes(outcome.response) == b"\x08\x01"

    def status(self) -> Any:
        assert self.client is not None
        return self.client.status()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.process.close()


class Fleet:
    """Replicas of one fleet database; start, kill and restart them by name."""

    def __init__(self, root: Path, dsn: str, modules: types.SimpleNamespace) -> None:
        self.root = root
        self.dsn = dsn
        self.modules = modules
        self.pb2 = modules.pb2
        self.replicas: dict[str, Replica] = {}

    def start(
        self, *names: str, extra: Sequence[str] = (), wait_sync: bool = True
    ) -> list[Replica]:
        """Start replicas (in parallel) and wait until each listens (and is in sync)."""
        started = []
        for name in names:
            workdir = self.root / name
            workdir.mkdir(exist_ok=True)
            args = ("--replication", self.dsn, "--log-level", "INFO", *extra)
            process = ServiceProcess(workdir, *args)
            replica = Replica(name, workdir, args, process)
            self.replicas[name] = replica
            started.append(replica)
        for replica in started:
            if wait_sync:
                replica.wait_ready()
            else:
                replica.process.wait_ready()
            replica.connect(self.modules)
        return started

    def restart(self, name: str, *, wait_sync: bool = True) -> Replica:
        old = self.replicas[name]
        old.close()
        process = ServiceProcess(old.workdir, *old.args)
        replica = Replica(name, old.workdir, old.args, process)
        self.replicas[name] = replica
        if wait_sync:
            replica.wait_ready()
        else:
            replica.process.wait_ready()
        replica.connect(self.modules)
        return replica

    def kill(self, name: str) -> None:
        replica = self.replicas[name]
        replica.process.send_signal(signal.SIGKILL)
        replica.process.wait_exit()

    def __getitem__(self, name: str) -> Replica:
        return self.replicas[name]

    def close(self) -> None:
        for replica in self.replicas.values():
            replica.close()

    # -- calls -------------------------------------------------------------------
    def install(
        self, name: str, rule_ids: Sequence[str], *, seed: int = 0, agent: str = TENANT
    ) -> Any:
        rules = []
        for i, rule_id in enumerate(rule_ids):
            rule = pb_rule(self.pb2, rule_id, seed=seed + i, agent_id=agent)
            rule.params["rule_decision"].string_value = "min"
            rules.append(rule)
        request = self.pb2.InstallRulesRequest(agent_id=agent, rules=rules, config_id="cfg")
        client = self[name].client
        assert client is not None
        return client.outcome("InstallRules", request)

    def remove(self, name: str, rule_id: str, *, agent: str = TENANT) -> Any:
        client = self[name].client
        assert client is not None
        return client.outcome(
            "RemovePolicy", self.pb2.RemovePolicyRequest(agent_id=agent, policy_id=rule_id)
        )


@contextlib.contextmanager
def running_fleet(
    root: Path, dsn: str, modules: types.SimpleNamespace, *names: str, extra: Sequence[str] = ()
) -> Iterator[Fleet]:
    fleet = Fleet(root, dsn, modules)
    try:
        fleet.start(*names, extra=extra)
        yield fleet
        for replica in fleet.replicas.values():
            if replica.process.returncode is None:
                replica.process.check_log_clean()
    finally:
        fleet.close()


# -- what the fleet database and the replicas hold ----------------------------------------


def database_name(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def engine_rules(postgres: PostgresServer, dsn: str) -> dict[str, int]:
    """Live rules of the fleet database: rule id -> unsigned 64-bit digest."""
    out = postgres.sql(
        "SELECT rule_id, digest FROM guardrefresh_rules WHERE NOT tombstone", database_name(dsn)
    )
    rules = {}
    for line in out.splitlines():
        rule_id, digest = line.rsplit("|", 1)
        rules[rule_id] = int(digest) % 2**64
    return rules


def engine_version(postgres: PostgresServer, dsn: str) -> int:
    out = postgres.sql(
        "SELECT greatest((SELECT coalesce(max(version), 0) FROM guardrefresh_rules), "
        "(SELECT value FROM guardrefresh_meta WHERE key = 'horizon'))",
        database_name(dsn),
    )
    return int(out.strip())


def engine_horizon(postgres: PostgresServer, dsn: str) -> int:
    out = postgres.sql(
        "SELECT value FROM guardrefresh_meta WHERE key = 'horizon'", database_name(dsn)
    )
    return int(out.strip())


def store_rules(path: Path) -> tuple[int, dict[str, int]]:
    """(bridge version, rule id -> digest) of a warm store, read as an offline tool does."""
    store = WarmStore(path)
    try:
        table = store.load()
        return table.bridge_version, {ref.rule_id: ref.digest for ref in table.iter_refs()}
    finally:
        store.close()


def wait_converged(
    fleet: Fleet, postgres: PostgresServer, *, names: Sequence[str] | None = None, timeout=15.0
) -> dict[str, int]:
    """Wait until every replica's store equals the fleet database; returns the rules."""
    names = list(names or fleet.replicas)
    expected: dict[str, int] = {}

    def converged() -> bool:
        nonlocal expected
        version = engine_version(postgres, fleet.dsn)
        expected = engine_rules(postgres, fleet.dsn)
        for name in names:
            local_version, rules = store_rules(fleet[name].warm_storage)
            if local_version != version or rules != expected:
                return False
        return True

    wait_until(converged, timeout=timeout, what=f"replicas {names} to equal the fleet database")
    return expected


def parallel(*calls: Any) -> list[Any]:
    """Run zero-argument callables in threads; their results in order."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def enforce_request(pb2: Any, vector: Sequence[float], request_id: str) -> Any:
    intent = {
        "id": request_id,
        "schemaVersion": "v1.3",
        "tenantId": TENANT,
        "timestamp": 1_767_000_100.5,
        "actor": {"id": "agent-7", "type": "agent"},
        "action": "read",
        "resource": {"type": "database"},
        "data": {"sensitivity": []},
        "risk": {"authn": "none"},
        "layer": "L1",  # the layer of the rules pb_rule makes
    }
    return pb2.EnforceRequest(
        intent_event_json=json.dumps(intent),
        intent_vector=list(vector),
        request_id=request_id,
    )


def intent_like(seed: int) -> list[float]:
    """An intent vector whose four slices are the first anchors of a seeded rule's slots
    (see reliability.service.anchors_payload with the default counts (1, 2, 0, 3))."""
    rng = np.random.default_rng(seed)
    slots = [rng.standard_normal((n, 32)).astype(np.float32) for n in (1, 2, 0, 3)]
    parts = [s[0] if len(s) else np.zeros(32, np.float32) for s in slots]
    return [float(v) for v in np.concatenate(parts)]
