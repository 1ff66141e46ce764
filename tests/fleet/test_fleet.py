"""Fleet mode end to end: real replica processes, a real PostgreSQL, grpcio clients.

Each test starts its replicas on a fresh database of the session's throwaway server
(``pg_dsn``) and checks every replica's warm storage against the fleet database rule
by rule (id and 64-bit content digest) and version by version.
"""

from __future__ import annotations

import time
import types
from pathlib import Path

import grpc
from pg_support import PostgresServer

from .fleet_support import (
    enforce_request,
    engine_horizon,
    engine_rules,
    intent_like,
    parallel,
    running_fleet,
    store_rules,
    wait_converged,
    wait_until,
)


def test_a_write_to_each_replica_is_visible_on_all_and_enforce_agrees(
    tmp_path: Path, postgres: PostgresServer, pg_dsn: str, grpcio_modules: types.SimpleNamespace
) -> None:
    with running_fleet(tmp_path, pg_dsn, grpcio_modules, "a", "b", "c") as fleet:
        pb2 = fleet.pb2
        for index, name in enumerate("abc"):
            outcome = fleet.install(name, [f"{name}-1", f"{name}-2"], seed=10 * index)
            assert outcome.ok, outcome.details
            version = outcome.response.bridge_version
            # Read-your-writes on the replica that answered.
            got = fleet[name].client.outcome("GetRule", pb2.GetRuleRequest(rule_id=f"{name}-1"))
            assert got.ok, got.details
            status = fleet[name].status()
            assert status.replication.local_version >= version
        rules = wait_converged(fleet, postgres)
        assert sorted(rules) == ["a-1", "a-2", "b-1", "b-2", "c-1", "c-2"]
        for name in "abc":
            stats = fleet[name].client.stats()
            assert stats.total_rules == 6
            status = fleet[name].status().replication
            assert status.connected and status.synced
            assert status.local_version == status.fleet_version
        # Enforce decides the same on every replica (the same evidence, rule by rule).
        request = enforce_request(pb2, intent_like(10), "req-1")
        answers = [fleet[name].client.call("Enforce", request) for name in "abc"]
        assert len(answers[0].evidence) == 6
        assert {a.SerializeToString(deterministic=True) for a in answers} == {
            answers[0].SerializeToString(deterministic=True)
        }
        # A removal on one replica leaves every replica.
        removed = fleet.remove("b", "a-1")
        assert removed.ok, removed.details
        gone = fleet["b"].client.outcome("GetRule", pb2.GetRuleRequest(rule_id="a-1"))
        assert gone.code is grpc.StatusCode.NOT_FOUND
        rules = wait_converged(fleet, postgres)
        assert "a-1" not in rules
        # Refusals are the single node's: another agent's rule, an unknown policy.
        taken = fleet.install("c", ["a-2"], agent="someone-else")
        assert taken.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "belongs to another agent" in taken.details
        missing = fleet.remove("a", "no-such-rule")
        assert missing.code is grpc.StatusCode.NOT_FOUND
        assert engine_rules(postgres, pg_dsn) == rules


def test_a_killed_replica_catches_up_with_thousands_of_changes(
    tmp_path: Path, postgres: PostgresServer, pg_dsn: str, grpcio_modules: types.SimpleNamespace
) -> None:
    with running_fleet(tmp_path, pg_dsn, grpcio_modules, "a", "b", "c") as fleet:
        pb2 = fleet.pb2
        assert fleet.install("a", [f"old-{i}" for i in range(100)]).ok
        wait_converged(fleet, postgres)
        fleet.kill("a")
        # 5,000 installs through the other two, in batches, both at once.
        batches = [[f"r-{b}-{i}" for i in range(500)] for b in range(10)]

        def install_on(name: str, mine: list[list[str]]) -> None:
            for batch in mine:
                outcome = fleet.install(name, batch, seed=len(batch))
                assert outcome.ok, outcome.details

        parallel(lambda: install_on("b", batches[0::2]), lambda: install_on("c", batches[1::2]))
        # 1,000 removals: 800 rules of one agent at once, 200 policies one by one.
        assert fleet.install("b", [f"other-{i}" for i in range(800)], agent="tenant-b").ok
        gone = fleet["c"].client.call(
            "RemoveAgentRules", pb2.RemoveAgentRulesRequest(agent_id="tenant-b")
        )
        assert gone.rules_removed == 800
        doomed = [f"r-0-{i}" for i in range(100)] + [f"old-{i}" for i in range(100)]

        def remove_on(name: str, ids: list[str]) -> None:
            for rule_id in ids:
                outcome = fleet.remove(name, rule_id)
                assert outcome.ok, outcome.details

        parallel(lambda: remove_on("b", doomed[0::2]), lambda: remove_on("c", doomed[1::2]))
        wait_converged(fleet, postgres, names=["b", "c"])
        # The killed replica comes back from its own store and catches up.
        fleet.restart("a")
        rules = wait_converged(fleet, postgres, timeout=20.0)
        assert len(rules) == 4900
        assert fleet["a"].status().replication.resyncs == 0  # pulled, not resynchronised
        assert fleet["a"].client.stats().total_rules == 4900


def test_the_database_down_reads_and_enforce_serve_writes_unavailable_then_converge(
    tmp_path: Path, postgres: PostgresServer, pg_dsn: str, grpcio_modules: types.SimpleNamespace
) -> None:
    """PostgreSQL stopped for about 10 s. Replicas a and b keep their defaults (degraded but
    up); c runs with --max-replication-lag 2 --fail-when-stale and goes NOT_SERVING; b is
    restarted during the outage: it serves its local rules but stays NOT_SERVING until its
    first sync."""
    with running_fleet(tmp_path, pg_dsn, grpcio_modules, "a", "b") as fleet:
        fleet.start("c", extra=("--max-replication-lag", "2", "--fail-when-stale"))
        pb2 = fleet.pb2
        assert fleet.install("a", [f"r-{i}" for i in range(20)]).ok
        before = wait_converged(fleet, postgres)
        request = enforce_request(pb2, intent_like(0), "req-down")
        expected = fleet["b"].client.call("Enforce", request).SerializeToString(deterministic=True)
        assert all(fleet[name].serving() for name in "abc")
        with postgres.stopped():
            deadline = time.monotonic() + 10.0
            for name in "abc":
                wait_until(
                    lambda name=name: not fleet[name].status().replication.connected,
                    what=f"replica {name} to notice the database is gone",
                )
            written = fleet.install("b", ["during-outage"])
            assert written.code is grpc.StatusCode.UNAVAILABLE
            assert "fleet database" in written.details
            removed = fleet.remove("c", "r-1")
            assert removed.code is grpc.StatusCode.UNAVAILABLE
            fleet.restart("b", wait_sync=False)  # starts from its own store
            while time.monotonic() < deadline:  # keep serving for the whole outage
                for name in "abc":
                    client = fleet[name].client
                    assert client.stats().total_rules == 20
                    got = client.outcome("GetRule", pb2.GetRuleRequest(rule_id="r-1"))
                    assert got.ok, got.details
                    answer = client.call("Enforce", request)
                    assert answer.SerializeToString(deterministic=True) == expected
                time.sleep(0.5)
            assert fleet["a"].serving()  # degraded but up
            assert not fleet["b"].serving()  # never synced since its start
            assert not fleet["b"].status().replication.synced
            assert not fleet["c"].serving()  # lag over its limit, --fail-when-stale
            status = fleet["c"].status().replication
            assert not status.connected and status.lag_s > 5 and status.lagging
            assert status.last_error
        # Back: every replica reconnects and serves, and writes work again everywhere.
        for name in "abc":
            wait_until(
                lambda name=name: fleet[name].serving(),
                timeout=15.0,
                what=f"replica {name} to reconnect and report SERVING",
            )
        assert fleet.install("c", ["after-outage"]).ok
        assert fleet.remove("a", "r-1").ok
        rules = wait_converged(fleet, postgres)
        assert set(rules) == (set(before) - {"r-1"}) | {"after-outage"}
        assert "during-outage" not in rules
        fleet["c"].process.wait_for_log("Replication lag .* exceeds --max-replication-lag 2s")


def test_two_writers_updating_the_same_rules_leave_every_replica_identical(
    tmp_path: Path, postgres: PostgresServer, pg_dsn: str, grpcio_modules: types.SimpleNamespace
) -> None:
    ids = [f"shared-{i}" for i in range(100)]
    with running_fleet(tmp_path, pg_dsn, grpcio_modules, "a", "b", "c") as fleet:

        def writer(name: str, seeds: range) -> None:
            for seed in seeds:
                outcome = fleet.install(name, ids, seed=seed)
                assert outcome.ok, outcome.details

        parallel(lambda: writer("a", range(0, 3000, 100)), lambda: writer("b", range(7, 3000, 100)))
        rules = wait_converged(fleet, postgres)
        assert sorted(rules) == sorted(ids)


def test_a_replica_stopped_past_the_tombstone_horizon_resynchronises(
    tmp_path: Path, postgres: PostgresServer, pg_dsn: str, grpcio_modules: types.SimpleNamespace
) -> None:
    extra = ("--tombstone-retention", "1")
    with running_fleet(tmp_path, pg_dsn, grpcio_modules, "a", "b", extra=extra) as fleet:
        assert fleet.install("a", [f"r-{i}" for i in range(50)]).ok
        wait_converged(fleet, postgres)
        stopped_at, _rules = store_rules(fleet["a"].warm_storage)
        fleet["a"].process.stop()
        for i in range(20):
            assert fleet.remove("b", f"r-{i}").ok
        assert fleet.install("b", ["new-1"]).ok
        # Tombstones older than a second go, one replica at a time; the horizon rises.
        wait_until(
            lambda: engine_horizon(postgres, pg_dsn) > stopped_at,
            timeout=15.0,
            what="the tombstone horizon to pass the stopped replica",
        )
        mark_restart = fleet.restart("a")
        mark_restart.process.wait_for_log(r"Fleet resync: local version \d+ is below the tombstone")
        mark_restart.process.wait_for_log(r"Fleet resync done: 31 rules")
        rules = wait_converged(fleet, postgres)
        assert len(rules) == 31
        assert fleet["a"].status().replication.resyncs == 1
