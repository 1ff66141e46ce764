"""The telemetry store: writes, queries, retention, faults. Real SQLite files, real threads."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio
from telemetry_support import make_session

from guardrefresh.telemetry import (
    SCHEMA_VERSION,
    STORED_RULE_FIELDS,
    WRITER_NICE,
    EnforcementSession,
    InvalidQueryError,
    SessionQuery,
    SessionReader,
    SessionWriter,
    TelemetryRecorder,
    expand_stored_json,
    open_telemetry,
)

T0 = 1_700_000_000_000


def write_all(
    path: Path, sessions: Sequence[EnforcementSession], **options: float
) -> SessionWriter:
    """Record ``sessions`` and run a writer until it has flushed them (in this thread)."""
    recorder = TelemetryRecorder(capacity=max(1, len(sessions)), batch_size=500)
    writer = SessionWriter(path, recorder, **options)  # type: ignore[arg-type]
    for session in sessions:
        assert recorder.record(session)
    writer.stop()
    writer.run()
    return writer


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@contextlib.contextmanager
def writer_thread(writer: SessionWriter) -> Iterator[SessionWriter]:
    thread = threading.Thread(target=writer.run)
    thread.start()
    try:
        yield writer
    finally:
        writer.stop()
        thread.join(30)
        assert not thread.is_alive()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "telemetry.db"


def test_sessions_read_back_by_id_as_written(db: Path) -> None:
    sessions = [make_session(f"s{i}", timestamp_ms=T0 + i) for i in range(10)]
    writer = write_all(db, sessions)
    assert writer.counters.committed == 10 and writer.counters.dropped == 0
    reader = SessionReader(db)
    try:
        for session in sessions:
            assert reader.get(session.session_id) == session.to_json()
        assert reader.get("unknown") is None
    finally:
        reader.close()


def test_files_are_owner_only_and_the_schema_is_versioned(db: Path) -> None:
    write_all(db, [make_session("s")])
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    for path in db.parent.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Every filter has an index: no full scan of the table for any of them.
        for column in ("tenant_id", "agent_id", "layer", "decision_name", "final_decision"):
            plan = conn.execute(
                f"EXPLAIN QUERY PLAN SELECT session_id FROM sessions WHERE {column} = ? "
                "ORDER BY timestamp_ms DESC LIMIT 50",
                ("x",),
            ).fetchall()
            text = " ".join(str(row[-1]) for row in plan)
            assert "USING INDEX" in text and "TEMP B-TREE" not in text, (column, text)


def _populate(db: Path) -> list[EnforcementSession]:
    decisions = ["ALLOW", "DENY", "MODIFY", "STEP_UP", "DEFER"]
    sessions = [
        make_session(
            f"s{i:03d}",
            timestamp_ms=T0 + i * 1000,
            tenant=f"tenant-{i % 3}",
            agent=f"agent-{i % 4}",
            layer=f"L{i % 2}",
            decision=decisions[i % 5],
        )
        for i in range(120)
    ]
    write_all(db, sessions)
    return sessions


def test_queries_filter_like_the_original_newest_first_with_the_total(db: Path) -> None:
    sessions = _populate(db)
    reader = SessionReader(db)

    def expect(query: SessionQuery, keep: Callable[[EnforcementSession], bool]) -> None:
        matching = sorted(
            (s for s in sessions if keep(s)), key=lambda s: s.timestamp_ms, reverse=True
        )
        page = reader.query(query)
        assert page.total_count == len(matching), query
        want = matching[query.offset : query.offset + query.page_size]
        assert [s.session_id for s in page.sessions] == [s.session_id for s in want], query

    try:
        expect(SessionQuery(), lambda s: True)
        expect(SessionQuery(tenant_id="tenant-1"), lambda s: s.tenant_id == "tenant-1")
        expect(SessionQuery(agent_id="agent-2"), lambda s: s.agent_id == "agent-2")
        expect(SessionQuery(layer="L1"), lambda s: s.layer == "L1")
        # decision: presence matters; 0 is "blocked", -1 is "all".
        expect(SessionQuery(decision=0), lambda s: s.final_decision == 0)
        expect(SessionQuery(decision=1), lambda s: s.final_decision == 1)
        expect(SessionQuery(decision=-1), lambda s: True)
        expect(SessionQuery(decision_name="STEP_UP"), lambda s: s.decision_name == "STEP_UP")
        expect(
            SessionQuery(start_time_ms=T0 + 10_000, end_time_ms=T0 + 30_000),
            lambda s: T0 + 10_000 <= s.timestamp_ms <= T0 + 30_000,
        )
        expect(
            SessionQuery(tenant_id="tenant-0", decision_name="DENY", start_time_ms=T0 + 50_000),
            lambda s: (
                s.tenant_id == "tenant-0"
                and s.decision_name == "DENY"
                and s.timestamp_ms >= T0 + 50_000
            ),
        )
        expect(SessionQuery(tenant_id=""), lambda s: s.tenant_id == "")
        expect(SessionQuery(limit=7, offset=30), lambda s: True)
        expect(SessionQuery(limit=10, offset=500), lambda s: True)
        page = reader.query(SessionQuery(limit=0))
        assert len(page.sessions) == 50  # 0 = the default page
        summary = reader.query(SessionQuery(limit=1)).sessions[0]
        newest = sessions[-1]
        assert summary.session_id == newest.session_id
        assert summary.intent_summary == "web_search"
        assert summary.rules_evaluated_count == 2 and summary.duration_us == 1500
        assert summary.final_decision == newest.final_decision
        assert summary.decision_name == newest.decision_name
        assert summary.deciding_rule_id == f"deciding-{newest.decision_name.lower()}"
    finally:
        reader.close()


def test_page_size_is_capped_at_500(db: Path) -> None:
    write_all(db, [make_session(f"s{i}", timestamp_ms=T0 + i) for i in range(600)])
    reader = SessionReader(db)
    try:
        page = reader.query(SessionQuery(limit=10_000))
        assert len(page.sessions) == 500 and page.total_count == 600
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limit": -1}, "limit must be >= 0"),
        ({"offset": -5}, "offset must be >= 0"),
        ({"start_time_ms": 10, "end_time_ms": 5}, "before start_time_ms"),
        ({"decision": 2}, "decision must be 0"),
        ({"decision_name": "deny"}, "decision_name must be one of"),
        ({"limit": "10"}, "limit must be an integer"),
    ],
)
def test_bad_filters_are_refused_with_a_clear_message(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidQueryError, match=message):
        SessionQuery(**fields)  # type: ignore[arg-type]


def test_retention_prunes_by_age_then_by_count_in_small_steps(db: Path) -> None:
    now_s = T0 / 1000
    old = [make_session(f"old{i}", timestamp_ms=T0 - 10_000_000 - i) for i in range(1500)]
    new = [make_session(f"new{i}", timestamp_ms=T0 - i) for i in range(700)]
    recorder = TelemetryRecorder(capacity=5000)
    writer = SessionWriter(
        db, recorder, retention_s=3600, max_sessions=500, wall_clock=lambda: now_s
    )
    for session in old + new:
        recorder.record(session)
    writer.stop()
    writer.run()
    writer.open()
    steps = 0
    chunk_limit = 20_000
    while True:
        before = writer.counters.pruned
        done = writer.prune_step()
        steps += 1
        assert writer.counters.pruned - before <= chunk_limit
        if done:
            break
        assert steps < 100
    assert steps > 1  # small steps, not one big delete
    assert writer.counters.pruned == 1500 + 200
    reader = SessionReader(db)
    try:
        page = reader.query(SessionQuery(limit=500))
        assert page.total_count == 500
        # The newest 500 remain.
        assert {s.session_id for s in page.sessions} == {f"new{i}" for i in range(500)}
    finally:
        reader.close()


def test_a_corrupt_file_is_moved_aside_and_a_fresh_database_created(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.parent.mkdir(mode=0o700)
    db.write_bytes(b"this is not a database, it is a text file" * 200)
    with caplog.at_level(logging.ERROR, logger="guardrefresh.telemetry"):
        write_all(db, [make_session("after")])
    aside = list(db.parent.glob("telemetry.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "moved aside" in errors[0].getMessage()
    assert str(aside[0]) in errors[0].getMessage()
    reader = SessionReader(db)
    try:
        assert reader.get("after") is not None
    finally:
        reader.close()


def test_a_foreign_sqlite_database_is_moved_aside(db: Path) -> None:
    db.parent.mkdir(mode=0o700)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE hitlogs (session_id TEXT)")
        conn.commit()
    write_all(db, [make_session("mine")])
    assert len(list(db.parent.glob("telemetry.db.corrupt-*"))) == 1
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1


def test_a_database_corrupted_while_running_is_replaced(db: Path) -> None:
    write_all(db, [make_session(f"s{i}", intent_extra="x" * 4000) for i in range(300)])
    size = db.stat().st_size
    with db.open("r+b") as f:  # damage every page after the first
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))
    writer = write_all(db, [make_session("fresh")])
    assert len(list(db.parent.glob("telemetry.db.corrupt-*"))) == 1
    # The batch that hit the damage is dropped; the next ones are written again.
    assert writer.counters.dropped + writer.counters.committed == 1


def _immutable(directory: Path, on: bool) -> None:
    subprocess.run(["chattr", "+i" if on else "-i", str(directory)], check=True, timeout=30)


def test_a_read_only_directory_degrades_telemetry_and_it_recovers_by_itself(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.parent.mkdir(mode=0o700)
    _immutable(db.parent, True)
    try:
        recorder = TelemetryRecorder()
        writer = SessionWriter(db, recorder, batch_window_s=0.01)
        writer.reopen_interval_s = 0.1
        with caplog.at_level(logging.INFO, logger="guardrefresh.telemetry"), writer_thread(writer):
            for i in range(5):
                recorder.record(make_session(f"lost{i}"))
                wait_for(lambda i=i: writer.counters.dropped == i + 1)  # type: ignore[misc]
            assert not writer.counters.healthy
            _immutable(db.parent, False)
            wait_for(lambda: writer.counters.healthy)
            recorder.record(make_session("kept"))
            wait_for(lambda: writer.counters.committed == 1)
    finally:
        _immutable(db.parent, False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one per minute at most
    assert "Telemetry degraded" in warnings[0].getMessage()
    assert any("recovered" in r.getMessage() for r in caplog.records)


def test_a_full_file_system_drops_batches_and_writing_resumes_when_space_returns(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_all(db, [make_session("first")])
    recorder = TelemetryRecorder()
    writer = SessionWriter(db, recorder, batch_window_s=0.01)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    big = "x" * 15_000
    with caplog.at_level(logging.WARNING, logger="guardrefresh.telemetry"), writer_thread(writer):
        wait_for(lambda: writer.counters.healthy and writer.counters.database_bytes > 0)
        # EFBIG from a file size limit is what a full disk looks like to SQLite (SQLITE_FULL).
        resource.setrlimit(resource.RLIMIT_FSIZE, (db.stat().st_size + 64 * 1024, hard))
        try:
            for i in range(40):
                recorder.record(make_session(f"big{i}", intent_extra=big))
            wait_for(lambda: writer.counters.dropped == 40)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert not writer.counters.healthy
        recorder.record(make_session("after"))
        wait_for(lambda: writer.counters.committed == 1)
        assert writer.counters.healthy
    assert any("Telemetry degraded" in r.getMessage() for r in caplog.records)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = {row[0] for row in conn.execute("SELECT session_id FROM sessions")}
    assert ids == {"first", "after"}


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    recorder = TelemetryRecorder(capacity=3)
    results = [recorder.record(make_session(f"s{i}")) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert recorder.dropped == 2 and recorder.depth == 3
    recorder.close()
    assert not recorder.record(make_session("late"))
    assert recorder.dropped == 3


def test_the_writer_commits_one_transaction_per_batch(db: Path) -> None:
    sessions = [make_session(f"s{i}", timestamp_ms=T0 + i) for i in range(1200)]
    writer = write_all(db, sessions)  # batch size 500: 500 + 500 + 200
    assert sum(writer.counters.commit_counts) == 3
    assert writer.counters.committed == 1200


async def test_open_telemetry_writes_everything_queued_when_the_block_ends(db: Path) -> None:
    # Sessions stamped T0 (2023) are past the default 7-day retention: a retention that
    # keeps them, or the background prune races the reads below.
    keep = 20 * 365 * 86400.0
    async with open_telemetry(db, batch_window_s=1.0, retention_s=keep) as telemetry:
        for i in range(300):
            assert telemetry.record(make_session(f"s{i}", timestamp_ms=T0 + i))
        # Within the window nothing needs to be committed yet; leaving must flush it all.
    async with open_telemetry(db, retention_s=keep) as telemetry:
        page = await telemetry.query(SessionQuery(limit=500))
        assert page.total_count == 300
        document = await telemetry.get("s7")
        assert document is not None and json.loads(document)["session_id"] == "s7"
        assert await telemetry.get("nope") is None
        stats = telemetry.stats()
        assert stats.healthy and stats.database_bytes > 0 and stats.dropped == 0


async def test_open_telemetry_flushes_when_cancelled(db: Path) -> None:
    with trio.CancelScope() as scope:
        async with open_telemetry(db, batch_window_s=1.0) as telemetry:
            for i in range(100):
                telemetry.record(make_session(f"s{i}"))
            scope.cancel()
            await trio.sleep_forever()
    reader = SessionReader(db)
    try:
        assert reader.query(SessionQuery()).total_count == 100
    finally:
        reader.close()


def test_an_unreadable_database_gives_a_clear_error(tmp_path: Path) -> None:
    from guardrefresh.telemetry import TelemetryUnavailableError

    reader = SessionReader(tmp_path / "missing.db")
    with pytest.raises(TelemetryUnavailableError, match="does not exist"):
        reader.query(SessionQuery())
    assert not os.path.exists(tmp_path / "missing.db")  # reading never creates it


async def test_metrics_expose_the_telemetry_counters(db: Path) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from guardrefresh.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    async with open_telemetry(db, batch_window_s=0.01, queue_capacity=5) as telemetry:
        metrics.bind_telemetry(telemetry.stats)
        for i in range(8):  # three more than the queue holds: dropped
            telemetry.record(make_session(f"m{i}"))
        # The writer is a thread: wait for it from one too.
        await trio.to_thread.run_sync(wait_for, lambda: telemetry.stats().recorded == 5)
        samples = {
            (sample.name, sample.labels.get("le")): sample.value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for sample in family.samples
        }
    assert samples[("guardrefresh_telemetry_sessions_recorded_total", None)] == 5
    assert samples[("guardrefresh_telemetry_dropped_total", None)] == 3
    assert samples[("guardrefresh_telemetry_queue_depth", None)] == 0
    assert samples[("guardrefresh_telemetry_pruned_total", None)] == 0
    assert samples[("guardrefresh_telemetry_database_bytes", None)] > 0
    assert samples[("guardrefresh_telemetry_healthy", None)] == 1
    assert samples[("guardrefresh_telemetry_batch_commit_seconds_count", None)] >= 1
    assert samples[("guardrefresh_telemetry_batch_commit_seconds_bucket", "+Inf")] >= 1


async def test_checkpoints_run_beside_the_writer_and_keep_the_wal_bounded(db: Path) -> None:
    from guardrefresh.telemetry import CHECKPOINT_WAL_BYTES

    wal = db.with_name(db.name + "-wal")
    sizes = []
    async with open_telemetry(db, batch_window_s=0.01) as telemetry:
        for round_ in range(12):
            for i in range(400):  # ~6.5 MB of sessions per round (16 KiB intents)
                telemetry.record(make_session(f"c{round_}-{i}", intent_extra="y" * 16_000))
            await trio.to_thread.run_sync(
                wait_for, lambda r=round_: telemetry.stats().recorded == 400 * (r + 1)
            )
            sizes.append(wal.stat().st_size)
        checkpoints = telemetry.writer.checkpoints_requested
    assert checkpoints >= 1
    # Checkpointed and restarted: the WAL did not grow with everything written (~80 MB).
    assert max(sizes) < 3 * CHECKPOINT_WAL_BYTES, sizes
    assert not wal.exists() or wal.stat().st_size == 0  # the last close checkpoints it all
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 4800


async def test_the_service_writer_runs_below_the_request_path_and_restores_its_thread(
    db: Path,
) -> None:
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    async with open_telemetry(db) as telemetry:
        writer = telemetry.writer
        assert telemetry.record(make_session("s1", timestamp_ms=T0))
        await trio.to_thread.run_sync(wait_for, lambda: writer.counters.committed == 1)
        assert writer.nice == WRITER_NICE
        assert writer.native_id is not None and writer.native_id != threading.get_native_id()
        assert os.getpriority(os.PRIO_PROCESS, writer.native_id) == base + WRITER_NICE
        # Only that thread: the Trio thread (Enforce's) keeps its priority.
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    # Trio reuses its worker threads: the writer's is back at the service's priority
    # (when the process may raise it again, as here: root in the test machine, or
    # CAP_SYS_NICE).
    if os.geteuid() == 0:
        assert os.getpriority(os.PRIO_PROCESS, writer.native_id) == base


def test_a_writer_run_directly_keeps_the_callers_priority(db: Path) -> None:
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    write_all(db, [make_session("s1", timestamp_ms=T0)])
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_rules_are_stored_as_rows_and_served_as_the_full_document(db: Path) -> None:
    session = make_session("compact", timestamp_ms=T0, rules=50)
    write_all(db, [session])
    with contextlib.closing(sqlite3.connect(db)) as conn:
        [(stored,)] = conn.execute("SELECT session_json FROM sessions").fetchall()
    full = session.to_json()
    assert len(stored) < len(full) / 2  # 50 rules: rows instead of 18-field objects
    rows = json.loads(stored)["rules_evaluated"]
    assert len(rows) == 50 and len(rows[0]) == len(STORED_RULE_FIELDS)
    reader = SessionReader(db)
    try:
        assert reader.get("compact") == full
        # A row written as a full document (as before) is served as it is.
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("UPDATE sessions SET session_json = ?", (full,))
        assert reader.get("compact") == full
        assert expand_stored_json(full) is full
    finally:
        reader.close()
