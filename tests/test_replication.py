"""Fleet replication in process, against a real PostgreSQL (``pg_dsn``).

The replica and the writes run here, on trio-asyncio's loop as in the service; the
end-to-end suite with replica processes is ``tests/fleet``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import attrs
import numpy as np
import pytest
import trio
import trio_asyncio
from factories import make_anchors, make_rule

from guardrefresh.bridge import Bridge, RuleConflictError, RuleNotFoundError
from guardrefresh.config import ReplicationConfig, mask_dsn
from guardrefresh.model import Rule
from guardrefresh.replication import (
    RULES_MIGRATIONS,
    Engine,
    EngineSettings,
    EngineUnavailableError,
    FleetWriter,
    PasswordFileError,
    Replica,
    UnsupportedRecordError,
    apply_migrations,
    encode_rules,
    open_engine,
)
from guardrefresh.replication._record import PageDecoder
from guardrefresh.replication._schema import GC_LOCK
from guardrefresh.replication._sql import (
    collect_tombstones,
    pull_changes,
    write_install,
)
from guardrefresh.server import open_asyncio_loop
from guardrefresh.storage import WarmStore


@pytest.fixture
async def engine(pg_dsn: str) -> AsyncIterator[Engine]:
    async with open_asyncio_loop(), open_engine(EngineSettings(dsn=pg_dsn)) as engine:
        await engine.run(apply_migrations, RULES_MIGRATIONS)
        yield engine


OpenBridge = Callable[[Path], Awaitable[Bridge]]


@pytest.fixture
def open_bridge() -> Iterator[OpenBridge]:
    """Opens bridges (warm stores) and closes them after the test (their journal
    descriptors would otherwise outlive it)."""
    opened: list[Bridge] = []

    async def open_one(path: Path) -> Bridge:
        bridge = await Bridge.open(path, make_dirs=True)
        opened.append(bridge)
        return bridge

    yield open_one
    for bridge in opened:
        bridge.close()


def store_content(bridge: Bridge) -> dict[str, Rule]:
    return {ref.rule_id: ref.rule for ref in bridge.table.iter_refs()}


async def engine_ids(engine: Engine) -> set[str]:
    async def fetch(connection: asyncpg.Connection) -> set[str]:
        rows = await connection.fetch("SELECT rule_id FROM guardrefresh_rules WHERE NOT tombstone")
        return {row["rule_id"] for row in rows}

    return await engine.run(fetch)


# -- the record --------------------------------------------------------------------------


def test_a_rule_survives_the_record_exactly(tmp_path: Path) -> None:
    rules = [
        make_rule("r1", installed_by="agent", config_id="cfg", owner="mp"),
        make_rule(
            "r2",
            seed=3,
            drift_threshold=-0.0,
            slice_weights=(0.1, 0.2, 0.3, 0.4),
            anchors=make_anchors((2, 0, 1, 4), seed=9, sent=(16, 3, 1, 4)),
            params={"i": 1, "f": 1.0, "b": True, "s": "x", "l": ("a",)},
            modification_spec='{"redact": ["ssn"]}',
        ),
    ]
    encoded = encode_rules(rules)
    decoder = PageDecoder()
    decoder.add(
        [
            {**attrs.asdict(e), "format": 1, "rule_id": e.rule_id}
            for e in encoded  # rows as the database returns them
        ]
    )
    columns = decoder.columns(bridge_version=5)
    assert [e.digest % 2**64 for e in encoded] == [int(d) for d in columns.fixed["digest"]]
    store = WarmStore(tmp_path / "w.bin")
    store.open()
    try:
        table = store.replace_columns(columns)
        assert table.bridge_version == 5
        assert [table.rule(r.rule_id) for r in rules] == rules
        back = table.rule("r2")
        assert back is not None and np.signbit(back.drift_threshold)
        assert table.content_digest() == decoder.digest()
    finally:
        store.close()


def test_a_row_of_another_record_format_is_refused() -> None:
    (encoded,) = encode_rules([make_rule("r1")])
    row = {**attrs.asdict(encoded), "format": 2}
    with pytest.raises(UnsupportedRecordError, match="record format 2; this build reads format 1"):
        PageDecoder().add([row])


# -- settings ------------------------------------------------------------------------------


def test_the_password_file_must_be_private_and_non_empty(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    config = ReplicationConfig(dsn="postgresql://guard@db/guard", password_file=path)
    settings = EngineSettings.from_config(config)
    assert settings.password == "s3cret"
    assert "s3cret" not in repr(settings)
    path.chmod(0o640)
    with pytest.raises(PasswordFileError, match="chmod 600"):
        EngineSettings.from_config(config)
    path.chmod(0o600)
    path.write_text("")
    with pytest.raises(PasswordFileError, match="is empty"):
        EngineSettings.from_config(config)
    with pytest.raises(PasswordFileError, match="cannot read"):
        EngineSettings.from_config(attrs.evolve(config, password_file=tmp_path / "none"))


def test_a_password_in_the_dsn_is_never_shown() -> None:
    dsn = "postgresql://guard:s3cret@db.example:5432/guard?sslmode=require"
    assert mask_dsn(dsn) == "postgresql://guard:***@db.example:5432/guard?sslmode=require"
    config = ReplicationConfig(dsn=dsn)
    assert "s3cret" not in repr(config) and "s3cret" not in config.masked_dsn


# -- the engine ----------------------------------------------------------------------------


async def test_an_unreachable_database_raises_engine_unavailable(tmp_path: Path) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = EngineSettings(dsn=f"postgresql://guard:pw@127.0.0.1:{port}/guard")
    async with open_asyncio_loop(), open_engine(settings) as engine:
        with pytest.raises(EngineUnavailableError, match="migrating failed: connect") as info:
            await engine.run(apply_migrations, RULES_MIGRATIONS, what="migrating")
        assert "pw" not in str(info.value)
        with pytest.raises(EngineUnavailableError, match="listening failed"):
            async with engine.listen("guardrefresh", lambda _p: None, lambda: None):
                pass


async def test_migrations_apply_once_even_when_replicas_start_together(
    engine: Engine, pg_dsn: str
) -> None:
    applied: list[int] = []

    async def migrate() -> None:
        applied.append(len(await engine.run(apply_migrations, RULES_MIGRATIONS)))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(migrate)
    assert applied == [0, 0, 0]  # the fixture applied them already

    async def steps(connection: asyncpg.Connection) -> list[tuple[str, int]]:
        rows = await connection.fetch("SELECT component, version FROM guardrefresh_migrations")
        return [(row["component"], row["version"]) for row in rows]

    assert await engine.run(steps) == [("rules", 1)]


# -- writes and the replica ----------------------------------------------------------------


async def test_writes_keep_the_single_node_rules_and_errors(
    engine: Engine, tmp_path: Path, open_bridge: OpenBridge
) -> None:
    bridge = await open_bridge(tmp_path / "a" / "w.bin")
    replica = Replica(bridge, engine)
    writer = FleetWriter(bridge, engine, replica)
    async with trio.open_nursery() as nursery:
        await nursery.start(replica.serve)
        await replica.synced.wait_value(True)
        result = await writer.install_rules("agent-a", [make_rule("r1"), make_rule("r2")])
        assert result.rules_installed == 2 and result.rules_by_layer == {"L1": 2}
        assert bridge.bridge_version >= result.bridge_version  # read-your-writes
        assert set(store_content(bridge)) == {"r1", "r2"}
        with pytest.raises(RuleConflictError, match="'r1' belongs to another agent"):
            await writer.install_rules("agent-b", [make_rule("r3"), make_rule("r1")])
        with pytest.raises(RuleConflictError, match="does not belong to agent agent-b"):
            await writer.remove_policy("agent-b", "r1")
        with pytest.raises(RuleNotFoundError, match="Policy not found: nope"):
            await writer.remove_policy("agent-a", "nope")
        assert await engine_ids(engine) == {"r1", "r2"}  # nothing of the refused writes
        assert await writer.remove_policy("agent-a", "r1") == 1
        assert await writer.remove_agent_rules("agent-a") == 1
        assert await writer.remove_agent_rules("agent-a") == 0
        assert store_content(bridge) == {}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("serialise", [True, False], ids=["with-lock", "without-lock"])
async def test_without_the_writers_lock_a_replica_misses_a_late_commit(
    engine: Engine, pg_dsn: str, tmp_path: Path, open_bridge: OpenBridge, serialise: bool
) -> None:
    """Writer A takes its version first but commits after writer B. With the advisory
    lock B waits for A, so versions become visible in order; without it the replica
    pulls B's version, then A's commits below its version, and the replica misses it
    for good (until a reconciliation compares digests). The same check passes with the
    lock and fails without: what the lock is for."""
    bridge = await open_bridge(tmp_path / "r" / "w.bin")
    replica = Replica(bridge, engine)
    (rule_a,), (rule_b,) = encode_rules([make_rule("a")]), encode_rules([make_rule("b")])
    connect: Callable[..., object] = trio_asyncio.aio_as_trio(asyncpg.connect)
    conn_a = await connect(pg_dsn)
    conn_b = await connect(pg_dsn)
    try:
        tx_a = conn_a.transaction()
        await trio_asyncio.aio_as_trio(tx_a.start)()
        await trio_asyncio.aio_as_trio(write_install)(conn_a, "t", [rule_a], serialise=serialise)
        b_done = trio.Event()

        async def write_b() -> None:
            await trio_asyncio.aio_as_trio(write_install)(
                conn_b, "t", [rule_b], serialise=serialise
            )
            b_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_b)
            with trio.move_on_after(0.5):
                await b_done.wait()
            assert b_done.is_set() is not serialise  # with the lock, B waits for A
            await replica.sync()  # a pull while A is still open
            await trio_asyncio.aio_as_trio(tx_a.commit)()
        await replica.sync()
    finally:
        for conn in (conn_a, conn_b):
            await trio_asyncio.aio_as_trio(conn.close)()
    in_step = set(store_content(bridge)) == await engine_ids(engine) == {"a", "b"}
    assert in_step is serialise
    if not serialise:
        # The periodic reconciliation finds and repairs it.
        assert await replica.reconcile()
        assert set(store_content(bridge)) == {"a", "b"}


async def test_a_store_ahead_of_the_fleet_is_replaced_by_the_fleets_rules(
    engine: Engine, tmp_path: Path, open_bridge: OpenBridge
) -> None:
    path = tmp_path / "r" / "w.bin"
    path.parent.mkdir()
    store = WarmStore(path)
    store.open()
    for i in range(3):  # a single node's store at version 3
        store.append(store.load(), [make_rule(f"local-{i}")])
    store.close()
    await engine.run(write_install, "t", encode_rules([make_rule("fleet-1")]))
    bridge = await open_bridge(path)
    replica = Replica(bridge, engine)
    await replica.sync()
    assert set(store_content(bridge)) == {"fleet-1"}
    assert bridge.bridge_version == 1 and replica.status().resyncs == 1


async def test_reconciliation_finds_a_rule_set_changed_behind_its_back(
    engine: Engine, tmp_path: Path, open_bridge: OpenBridge
) -> None:
    bridge = await open_bridge(tmp_path / "r" / "w.bin")
    replica = Replica(bridge, engine)
    await engine.run(write_install, "t", encode_rules([make_rule("r1"), make_rule("r2")]))
    await replica.sync()
    assert not await replica.reconcile()  # in step: nothing to do

    async def vanish(connection: asyncpg.Connection) -> None:
        # A row deleted by hand, without a tombstone: no pull can see that.
        await connection.execute("DELETE FROM guardrefresh_rules WHERE rule_id = 'r1'")

    await engine.run(vanish)
    await replica.sync()
    assert set(store_content(bridge)) == {"r1", "r2"}
    assert await replica.reconcile()
    assert set(store_content(bridge)) == {"r2"}


async def test_tombstones_are_collected_one_replica_at_a_time_and_raise_the_horizon(
    engine: Engine, pg_dsn: str, tmp_path: Path, open_bridge: OpenBridge
) -> None:
    bridge = await open_bridge(tmp_path / "r" / "w.bin")
    replica = Replica(bridge, engine)
    writer = FleetWriter(bridge, engine, replica)
    async with trio.open_nursery() as nursery:
        await nursery.start(replica.serve)
        await writer.install_rules("t", [make_rule("r1"), make_rule("r2")])
        await writer.remove_policy("t", "r1")
        removed_at = bridge.bridge_version
        nursery.cancel_scope.cancel()
    await trio.sleep(0.05)  # older than the retention below
    holder = await trio_asyncio.aio_as_trio(asyncpg.connect)(pg_dsn)
    try:  # another replica collecting: this one skips
        await trio_asyncio.aio_as_trio(holder.execute)("SELECT pg_advisory_lock($1)", GC_LOCK)
        assert await engine.run(collect_tombstones, 0.01) is None
    finally:
        await trio_asyncio.aio_as_trio(holder.close)()
    assert await engine.run(collect_tombstones, 0.01) == (1, removed_at)
    assert await engine.run(collect_tombstones, 0.01) == (0, removed_at)
    pull = await engine.run(pull_changes, removed_at - 1, 100)
    assert pull.resync  # a replica below the horizon can only resync
