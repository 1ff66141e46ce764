"""The fleet's telemetry store in a real PostgreSQL: schema, outages, several writers, pruning.

What both stores share (filters, paging, totals, flushing) is in
test_telemetry_backends.py; this file covers what only the fleet's store has.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio
import trio_asyncio
from pg_support import PostgresServer
from support.waiting import wait_until_async
from telemetry_support import engine_settings, make_session

from guardrefresh.replication import Engine, open_engine
from guardrefresh.telemetry import (
    PG_SCHEMA_VERSION,
    EnforcementSession,
    PostgresSessionWriter,
    SessionQuery,
    TelemetryRecorder,
    TelemetryStore,
    TelemetryUnavailableError,
    open_postgres_telemetry,
    open_telemetry,
)
from guardrefresh.telemetry._pg_schema import PRUNE_LOCK_KEY, migrate

T0 = int(time.time() * 1000) - 3_600_000
TESTS = Path(__file__).parent


@contextlib.asynccontextmanager
async def engine_for(dsn: str) -> AsyncIterator[Engine]:
    async with trio_asyncio.open_loop(), open_engine(engine_settings(dsn)) as engine:
        yield engine


async def record_all(store: TelemetryStore, sessions: Sequence[EnforcementSession]) -> None:
    before = store.stats().recorded
    for session in sessions:
        assert store.record(session)
    await wait_until_async(lambda: store.stats().recorded >= before + len(sessions), limit_s=20)


async def _fetch(conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await conn.fetch(sql, *args)]


async def test_the_schema_is_created_once_and_versioned(pg_dsn: str) -> None:
    async with engine_for(pg_dsn) as engine:
        # Replicas starting together: every one migrates, each step is applied once.
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(engine.run, migrate)
        assert await engine.run(migrate) == PG_SCHEMA_VERSION
        rows = await engine.run(
            _fetch,
            "SELECT component, version FROM guardrefresh_migrations WHERE component = $1",
            "telemetry",
        )
        assert rows == [("telemetry", v) for v in range(1, PG_SCHEMA_VERSION + 1)]
        tables = await engine.run(
            _fetch,
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'telemetry%' ORDER BY 1",
        )
        assert tables == [("telemetry_session_count",), ("telemetry_sessions",)]


async def test_every_filter_is_served_in_time_order_by_an_index(pg_dsn: str) -> None:
    async def plan(conn: Any, column: str, value: object) -> str:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            rows = await conn.fetch(
                f"EXPLAIN SELECT session_id FROM telemetry_sessions WHERE {column} = $1 "
                "ORDER BY timestamp_ms DESC, id DESC LIMIT 50",
                value,
            )
        return "\n".join(r[0] for r in rows)

    async with engine_for(pg_dsn) as engine:
        await engine.run(migrate)
        for column, value in [
            ("tenant_id", "t"),
            ("agent_id", "a"),
            ("layer", "L4"),
            ("decision_name", "DENY"),
            ("final_decision", 0),
        ]:
            text = await engine.run(plan, column, value)
            assert "Index" in text and "Sort" not in text, (column, text)


async def test_a_broken_schema_drops_and_counts_and_says_why(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with engine_for(pg_dsn) as engine:
        await engine.run(migrate)
        # Someone dropped the table (a restore gone wrong): nothing to write into.
        await engine.run(_fetch, "DROP TABLE telemetry_sessions")
        async with open_telemetry(Path("unused"), engine=engine, batch_window_s=0.01) as store:
            store.record(make_session("x"))
            await wait_until_async(lambda: store.stats().dropped == 1)
            assert not store.stats().healthy
            with pytest.raises(TelemetryUnavailableError, match="telemetry_sessions"):
                await store.query(SessionQuery())
    assert 'relation "telemetry_sessions" does not exist' in caplog.text


async def test_an_outage_degrades_telemetry_and_it_recovers_by_itself(
    postgres: PostgresServer, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrefresh.telemetry")
    async with (
        engine_for(pg_dsn) as engine,
        open_telemetry(Path("unused"), engine=engine, batch_window_s=0.02) as store,
    ):
        await record_all(
            store, [make_session(f"before{i}", timestamp_ms=T0 + i) for i in range(10)]
        )
        await trio.to_thread.run_sync(postgres.stop)
        try:
            # Recording goes on while PostgreSQL is gone: never blocks, never raises.
            started = time.monotonic()
            for i in range(12):
                assert store.record(make_session(f"lost{i}", timestamp_ms=T0 + 100 + i)) in (
                    True,
                    False,
                )
                await trio.sleep(0.2)
            assert time.monotonic() - started < 5
            await wait_until_async(lambda: store.stats().dropped > 0)
            assert not store.stats().healthy
            with pytest.raises(TelemetryUnavailableError, match="cannot read the fleet's"):
                await store.query(SessionQuery())
        finally:
            await trio.to_thread.run_sync(postgres.start)

        # Back: the writer finds it again by itself (probe until a batch lands).
        probe = 0
        with trio.fail_after(15):
            while not store.stats().healthy:
                store.record(make_session(f"probe{probe}", timestamp_ms=T0 + 1000 + probe))
                probe += 1
                await trio.sleep(0.1)
        await record_all(
            store, [make_session(f"after{i}", timestamp_ms=T0 + 2000 + i) for i in range(10)]
        )
        page = await store.query(SessionQuery(limit=500))
        stats = store.stats()
    ids = {s.session_id for s in page.sessions}
    assert {f"before{i}" for i in range(10)} <= ids
    assert {f"after{i}" for i in range(10)} <= ids
    assert stats.healthy and stats.dropped > 0
    degraded = [r for r in caplog.records if "Telemetry degraded" in r.getMessage()]
    # Several batches failed in ~2.4 s; one WARNING said so (at most one a minute).
    assert len(degraded) == 1 and degraded[0].levelno == logging.WARNING
    # It says why: the database could not be reached, or it dropped the connection mid-call.
    assert re.search(r"cannot|connection", degraded[0].getMessage()), degraded[0].getMessage()
    assert any("Telemetry recording recovered" in r.getMessage() for r in caplog.records)


async def test_two_replicas_write_and_either_one_reads_both(pg_dsn: str) -> None:
    count = 400

    async def child(prefix: str) -> str:
        result = await trio.run_process(
            [sys.executable, str(TESTS / "pg_telemetry_child.py"), pg_dsn, prefix, str(count)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    outputs: dict[str, str] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for prefix in ("replica-a", "replica-b"):

                async def run(prefix: str = prefix) -> None:
                    outputs[prefix] = await child(prefix)

                nursery.start_soon(run)
    assert outputs == {p: f"DONE {count} 0\n" for p in ("replica-a", "replica-b")}
    async with (
        engine_for(pg_dsn) as engine,
        open_telemetry(Path("unused"), engine=engine) as store,
    ):
        page = await store.query(SessionQuery(limit=500))
        assert page.total_count == 2 * count
        assert {s.agent_id for s in page.sessions} == {"replica-a", "replica-b"}
        for prefix in ("replica-a", "replica-b"):
            assert (await store.query(SessionQuery(agent_id=prefix))).total_count == count
            assert await store.get(f"{prefix}-{count - 1}") is not None


async def test_retention_prunes_by_age_then_by_count_one_replica_at_a_time(pg_dsn: str) -> None:
    now_s = time.time()
    now_ms = int(now_s * 1000)
    old = [make_session(f"old{i}", timestamp_ms=now_ms - 10_000_000 - i) for i in range(1500)]
    new = [make_session(f"new{i}", timestamp_ms=now_ms - i) for i in range(700)]
    async with engine_for(pg_dsn) as engine:
        writer = PostgresSessionWriter(
            engine,
            TelemetryRecorder(10),
            retention_s=3600,
            max_sessions=500,
            wall_clock=lambda: now_s,
        )
        everything = old + new
        for start in range(0, len(everything), 500):
            assert await writer.write(everything[start : start + 500])

        # Another replica is pruning (holds the lock): this one leaves it alone.
        holder = await trio_asyncio.aio_as_trio(asyncpg.connect)(pg_dsn)
        try:
            await trio_asyncio.aio_as_trio(holder.execute)(
                "SELECT pg_advisory_lock($1)", PRUNE_LOCK_KEY
            )
            assert await writer.prune_step() is True
            assert writer.counters.pruned == 0
        finally:
            await trio_asyncio.aio_as_trio(holder.close)()

        steps = 0
        while not await writer.prune_step():
            steps += 1
            assert steps < 100
        assert steps >= 1  # small steps, not one big delete
        assert writer.counters.pruned == 1500 + 200
        rows = await engine.run(
            _fetch, "SELECT session_id FROM telemetry_sessions ORDER BY timestamp_ms DESC"
        )
        counted = await engine.run(_fetch, "SELECT sum(n) FROM telemetry_session_count")
    assert [r[0] for r in rows] == [f"new{i}" for i in range(500)]
    assert counted == [(500,)]


async def test_leaving_while_postgresql_is_down_ends_within_the_flush_timeout(
    postgres: PostgresServer, pg_dsn: str
) -> None:
    async with engine_for(pg_dsn) as engine:
        await engine.run(migrate)
        await trio.to_thread.run_sync(postgres.stop)
        try:
            started = time.monotonic()
            async with open_postgres_telemetry(
                engine, batch_window_s=10.0, flush_timeout_s=1.0
            ) as store:
                for i in range(100):
                    store.record(make_session(f"z{i}"))
            elapsed = time.monotonic() - started
        finally:
            await trio.to_thread.run_sync(postgres.start)
    assert elapsed < 4.0
    stats = store.stats()
    assert stats.recorded == 0 and stats.dropped == 100


async def test_reads_work_from_asyncio_handlers_as_the_data_plane_calls_them(pg_dsn: str) -> None:
    # The gRPC handlers are asyncio code: they await the store through trio_as_aio, and
    # the store reaches asyncpg through the engine (asyncio -> Trio -> asyncio).
    async with (
        engine_for(pg_dsn) as engine,
        open_telemetry(Path("unused"), engine=engine, batch_window_s=0.01) as store,
    ):
        await record_all(store, [make_session(f"h{i}", timestamp_ms=T0 + i) for i in range(30)])

        async def handler(i: int) -> tuple[int, str | None]:
            page = await trio_asyncio.trio_as_aio(store.query)(SessionQuery(limit=5, offset=i))
            document = await trio_asyncio.trio_as_aio(store.get)(f"h{i}")
            return page.total_count, document

        results: list[tuple[int, str | None]] = []

        async def call(i: int) -> None:
            results.append(await trio_asyncio.aio_as_trio(handler)(i))

        async with trio.open_nursery() as nursery:
            for i in range(10):  # concurrently: more than the reader's connections
                nursery.start_soon(call, i)
    assert len(results) == 10
    assert all(total == 30 and document is not None for total, document in results)
