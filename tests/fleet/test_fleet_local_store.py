"""A fleet replica's local store is a cache of the database: damaged, it is rebuilt.

Real replica processes and a real PostgreSQL. The damage is what a power loss can
leave now that replicated pages are not fsynced: a manifest whose rename reached the
disk before its content (empty), or committed journal bytes that never did (changed).
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from pg_support import PostgresServer

from .fleet_support import running_fleet, wait_converged


def _empty_manifest(store: Path) -> None:
    store.write_bytes(b"")


def _flip_journal_byte(store: Path) -> None:
    (journal,) = store.parent.glob(store.name + ".*.journal")
    raw = bytearray(journal.read_bytes())
    assert len(raw) > 200  # the 50 rules were appended, not folded into a snapshot
    raw[len(raw) // 2] ^= 0xFF
    journal.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_empty_manifest, _flip_journal_byte])
def test_a_replica_started_on_a_damaged_store_rebuilds_it_from_the_database_and_serves(
    tmp_path: Path,
    postgres: PostgresServer,
    pg_dsn: str,
    grpcio_modules: types.SimpleNamespace,
    damage: object,
) -> None:
    with running_fleet(tmp_path, pg_dsn, grpcio_modules, "a", "b") as fleet:
        assert fleet.install("a", [f"r-{i}" for i in range(50)]).ok
        wait_converged(fleet, postgres)
        store = fleet["a"].warm_storage
        fleet["a"].process.stop()
        assert callable(damage)
        damage(store)
        assert fleet.install("b", ["while-down"]).ok
        restarted = fleet.restart("a")
        restarted.process.wait_for_log(
            r"Warm storage is damaged \(.*\); moved its files to .*\.damaged and starting empty"
        )
        rules = wait_converged(fleet, postgres)
        assert len(rules) == 51
        assert fleet["a"].client.stats().total_rules == 51
        assert fleet["a"].serving()
        # The damaged files are kept for inspection, out of the new store's way.
        aside = store.with_name(store.name + ".damaged")
        assert (aside / store.name).is_file()
        assert list(aside.glob(store.name + ".*.journal"))
        # And it takes writes again, which reach the other replica.
        assert fleet.install("a", ["after"]).ok
        assert len(wait_converged(fleet, postgres)) == 52
