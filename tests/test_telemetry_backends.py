"""Both telemetry stores, SQLite (one node) and PostgreSQL (a fleet), answer alike.

Every test here runs twice, once per backend, through the public store interface
(``open_telemetry``, ``record``, ``query``, ``get``, ``stats``): the same sessions in,
the same pages, totals and documents out. PostgreSQL is a real throwaway server
(tests/pg_support.py); without it installed the PostgreSQL half skips.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio
from support.waiting import wait_until_async
from telemetry_support import engine_settings, make_session

from guardrefresh.replication import open_engine
from guardrefresh.telemetry import (
    EnforcementSession,
    SessionQuery,
    TelemetryStore,
    open_telemetry,
)

#: An hour ago: well inside the default retention (the stores prune what is older).
T0 = int(time.time() * 1000) - 3_600_000

Opener = Callable[..., contextlib.AbstractAsyncContextManager[TelemetryStore]]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """``open_store(**options)``: the backend's store, as the service would open it."""
    path = tmp_path / "telemetry.db"
    if request.param == "sqlite":
        return lambda **options: open_telemetry(path, **options)
    dsn = request.getfixturevalue("pg_dsn")

    @contextlib.asynccontextmanager
    async def open_pg(**options: Any) -> AsyncIterator[TelemetryStore]:
        async with (
            trio_asyncio.open_loop(),
            open_engine(engine_settings(dsn)) as engine,
            open_telemetry(path, engine=engine, **options) as store,
        ):
            yield store

    return open_pg


async def record_all(store: TelemetryStore, sessions: Sequence[EnforcementSession]) -> None:
    """Record ``sessions`` and wait until the writer has committed them."""
    before = store.stats().recorded
    for session in sessions:
        assert store.record(session)
    await wait_until_async(lambda: store.stats().recorded >= before + len(sessions), limit_s=20)


def populate() -> list[EnforcementSession]:
    decisions = ["ALLOW", "DENY", "MODIFY", "STEP_UP", "DEFER"]
    return [
        make_session(
            f"s{i:03d}",
            timestamp_ms=T0 + i * 1000,
            tenant=f"tenant-{i % 3}" if i % 10 else "",
            agent=f"agent-{i % 4}",
            layer=f"L{i % 2}",
            decision=decisions[i % 5],
        )
        for i in range(120)
    ]


QUERY_CASES: list[tuple[SessionQuery, Callable[[EnforcementSession], bool]]] = [
    (SessionQuery(), lambda s: True),
    (SessionQuery(tenant_id="tenant-1"), lambda s: s.tenant_id == "tenant-1"),
    (SessionQuery(tenant_id=""), lambda s: s.tenant_id == ""),
    (SessionQuery(agent_id="agent-2"), lambda s: s.agent_id == "agent-2"),
    (SessionQuery(layer="L1"), lambda s: s.layer == "L1"),
    # decision: presence matters; 0 is "blocked", -1 is "all".
    (SessionQuery(decision=0), lambda s: s.final_decision == 0),
    (SessionQuery(decision=1), lambda s: s.final_decision == 1),
    (SessionQuery(decision=-1), lambda s: True),
    (SessionQuery(decision_name="STEP_UP"), lambda s: s.decision_name == "STEP_UP"),
    (
        SessionQuery(start_time_ms=T0 + 10_000, end_time_ms=T0 + 30_000),
        lambda s: T0 + 10_000 <= s.timestamp_ms <= T0 + 30_000,
    ),
    (
        SessionQuery(tenant_id="tenant-0", decision_name="DENY", start_time_ms=T0 + 50_000),
        lambda s: (
            s.tenant_id == "tenant-0"
            and s.decision_name == "DENY"
            and s.timestamp_ms >= T0 + 50_000
        ),
    ),
    (
        SessionQuery(agent_id="agent-1", layer="L1", decision=1, end_time_ms=T0 + 90_000),
        lambda s: (
            s.agent_id == "agent-1"
            and s.layer == "L1"
            and s.final_decision == 1
            and s.timestamp_ms <= T0 + 90_000
        ),
    ),
    (SessionQuery(tenant_id="nobody"), lambda s: False),
    (SessionQuery(limit=7, offset=30), lambda s: True),
    (SessionQuery(tenant_id="tenant-2", limit=5, offset=10), lambda s: s.tenant_id == "tenant-2"),
    (SessionQuery(limit=10, offset=500), lambda s: True),
]


async def test_queries_filter_page_and_count_alike(open_store: Opener) -> None:
    sessions = populate()
    async with open_store(batch_window_s=0.01) as store:
        await record_all(store, sessions)
        for query, keep in QUERY_CASES:
            matching = sorted(
                (s for s in sessions if keep(s)), key=lambda s: s.timestamp_ms, reverse=True
            )
            page = await store.query(query)
            assert page.total_count == len(matching), query
            want = matching[query.offset : query.offset + query.page_size]
            assert [s.session_id for s in page.sessions] == [s.session_id for s in want], query
        assert len((await store.query(SessionQuery(limit=0))).sessions) == 50
        summary = (await store.query(SessionQuery(limit=1))).sessions[0]
    newest = sessions[-1]
    assert summary.session_id == newest.session_id
    assert summary.tenant_id == newest.tenant_id and summary.agent_id == newest.agent_id
    assert summary.layer == newest.layer and summary.timestamp_ms == newest.timestamp_ms
    assert summary.intent_summary == "web_search"
    assert summary.rules_evaluated_count == 2 and summary.duration_us == 1500
    assert summary.final_decision == newest.final_decision
    assert summary.decision_name == newest.decision_name
    assert summary.deciding_rule_id == f"deciding-{newest.decision_name.lower()}"


async def test_sessions_read_back_by_id_as_written(open_store: Opener) -> None:
    sessions = [make_session(f"id{i}", timestamp_ms=T0 + i) for i in range(20)]
    async with open_store(batch_window_s=0.01) as store:
        await record_all(store, sessions)
        for session in sessions:
            assert await store.get(session.session_id) == session.to_json()
        assert await store.get("unknown") is None
        stats = store.stats()
    assert stats.recorded == 20 and stats.dropped == 0 and stats.healthy


async def test_a_session_recorded_again_replaces_the_first(open_store: Opener) -> None:
    async with open_store(batch_window_s=0.01) as store:
        await record_all(store, [make_session("same", decision="ALLOW", timestamp_ms=T0)])
        # Twice in one batch as well: the last one wins.
        await record_all(
            store,
            [
                make_session("same", decision="DEFER", timestamp_ms=T0 + 1),
                make_session("same", decision="DENY", timestamp_ms=T0 + 2),
            ],
        )
        page = await store.query(SessionQuery())
        document = await store.get("same")
    assert page.total_count == 1
    assert page.sessions[0].decision_name == "DENY"
    assert document is not None and json.loads(document)["decision_name"] == "DENY"


async def test_pages_are_capped_at_500(open_store: Opener) -> None:
    async with open_store(batch_window_s=0.01, batch_size=250) as store:
        await record_all(store, [make_session(f"p{i}", timestamp_ms=T0 + i) for i in range(600)])
        page = await store.query(SessionQuery(limit=10_000))
        stats = store.stats()
    assert len(page.sessions) == 500 and page.total_count == 600
    # 600 sessions in batches of at most 250: at least three transactions.
    assert sum(stats.commit_counts) >= 3


async def test_leaving_the_block_writes_everything_queued(open_store: Opener) -> None:
    async with open_store(batch_window_s=5.0) as store:
        for i in range(300):
            assert store.record(make_session(f"q{i}", timestamp_ms=T0 + i))
        # Within the window nothing needs to be committed yet; leaving must flush it all.
    async with open_store() as store:
        assert (await store.query(SessionQuery())).total_count == 300
        assert await store.get("q299") is not None


async def test_cancelling_the_block_still_writes_the_queue(open_store: Opener) -> None:
    with trio.CancelScope() as scope:
        async with open_store(batch_window_s=5.0) as store:
            for i in range(100):
                store.record(make_session(f"c{i}"))
            scope.cancel()
            await trio.sleep_forever()
    async with open_store() as store:
        assert (await store.query(SessionQuery())).total_count == 100


async def test_text_postgresql_cannot_hold_is_replaced_not_dropped(open_store: Opener) -> None:
    # NUL and a lone surrogate (an intent can carry both): PostgreSQL text refuses them.
    odd = make_session("odd", tenant="ten\x00ant", agent="ag\udcffent", timestamp_ms=T0)
    async with open_store(batch_window_s=0.01) as store:
        await record_all(store, [odd, make_session("plain", timestamp_ms=T0 + 1)])
        page = await store.query(SessionQuery())
        stats = store.stats()
    assert page.total_count == 2 and stats.dropped == 0
    by_id = {s.session_id: s for s in page.sessions}
    assert by_id["odd"].tenant_id.startswith("ten") and by_id["odd"].tenant_id.endswith("ant")
