"""Telemetry benchmarks: sustained ingestion into the writer, and queries over a big store.

- ``ingest_dropped_per_s``: sessions recorded at a steady ``rate`` per second for
  ``window`` seconds (in bursts every 10 ms, from the Trio thread, as Enforce records
  them) into :func:`guardrefresh.telemetry.open_telemetry`; the samples are the sessions
  dropped per second (target: none). The same run gives
  ``ingest_writer_cpu_us_per_session``: the writer thread's CPU time (its own
  ``pthread`` CPU clock) per committed session, per second.
- ``query_*``: :class:`guardrefresh.telemetry.SessionReader` (what QueryTelemetry runs
  in its worker thread; the RPC adds its round trip) over a database of
  ``query_sessions`` sessions spread over the last 7 days, 20 tenants, 40 agents, the
  five decisions: a tenant + decision + last-hour filter, the unfiltered newest page,
  and a deep page (offset 100,000).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import trio

from guardrefresh.telemetry import (
    DECISION_NAMES,
    Durations,
    EnforcementSession,
    RuleEvaluation,
    SessionQuery,
    SessionReader,
    SessionWriter,
    TelemetryRecorder,
    open_telemetry,
)

from ._data import Plan, Target, Workspace, entry

__all__ = ["run_telemetry"]

logger = logging.getLogger("bench.telemetry")

INGEST_RATE = 2000
INGEST_WINDOW_S = 60.0
QUERY_SESSIONS = 1_000_000
QUERY_REPEATS = 50
FILTER_TARGET_MS = 20.0
NEWEST_TARGET_MS = 10.0
DEEP_OFFSET = 100_000
_TENANTS = tuple(f"tenant-{i:02d}" for i in range(20))
_AGENTS = tuple(f"agent-{i:02d}" for i in range(40))


def _session(i: int, timestamp_ms: int, rng: random.Random) -> EnforcementSession:
    """A realistic session: an intent of a few hundred bytes, three evaluated rules."""
    tenant = _TENANTS[i % len(_TENANTS)]
    decision = DECISION_NAMES[rng.randrange(len(DECISION_NAMES))]
    rules = tuple(
        RuleEvaluation(
            rule_id=f"rule-{(i + k) % 100:03d}",
            rule_name=f"boundary {k}",
            decision=1 if k == 2 and decision != "DENY" else 0,
            similarities=(0.91, 0.42, 0.77, 0.18),
            thresholds=(0.75, 0.75, 0.75, 0.75),
            scoring_mode="min",
            triggering_slice="action",
            anchor_matched="0",
        )
        for k in range(3)
    )
    intent = (
        f'{{"id": "intent-{i}", "schemaVersion": "v1.3", "tenantId": "{tenant}", '
        f'"timestamp": {timestamp_ms / 1000}, "actor": {{"id": "{_AGENTS[i % 40]}", '
        '"type": "agent"}, "action": "read", "resource": {"type": "database", '
        '"name": "customers"}, "data": {"sensitivity": ["pii"], "pii": true, '
        '"volume": "single"}, "risk": {"authn": "required"}, "layer": "L4", '
        '"tool_name": "sql_query"}'
    )
    return EnforcementSession(
        session_id=f"req-{i:08d}",
        timestamp_ms=timestamp_ms,
        tenant_id=tenant,
        agent_id=_AGENTS[i % len(_AGENTS)],
        layer="L4",
        decision_name=decision,
        drift_score=0.1,
        final_similarities=(0.91, 0.42, 0.77, 0.18),
        evidence=rules,
        rules_evaluated=3,
        durations=Durations(encode_us=0, rule_query_us=40, evaluation_us=300, total_us=420),
        intent_json=intent,
        intent_summary="sql_query",
    )


def _thread_cpu_s(ident: int | None) -> float:
    if ident is None:
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


async def _ingest(path: Path, rate: int, window_s: float) -> dict[str, list[float]]:
    rng = random.Random(1)
    per_tick = rate // 100
    dropped_per_s: list[float] = []
    cpu_per_session: list[float] = []
    async with open_telemetry(path) as telemetry:
        writer = telemetry.writer
        i = 0
        start = trio.current_time()
        second_start = start
        last = (telemetry.stats(), _thread_cpu_s(writer.thread_ident))
        tick = 0
        while trio.current_time() - start < window_s:
            tick += 1
            now_ms = int(time.time() * 1000)
            for _ in range(per_tick):
                telemetry.record(_session(i, now_ms, rng))
                i += 1
            await trio.sleep_until(start + tick * 0.01)
            if trio.current_time() - second_start >= 1.0:
                second_start += 1.0
                stats, cpu = telemetry.stats(), _thread_cpu_s(writer.thread_ident)
                committed = stats.recorded - last[0].recorded
                dropped_per_s.append(float(stats.dropped - last[0].dropped))
                if committed:
                    cpu_per_session.append((cpu - last[1]) / committed * 1e6)
                last = (stats, cpu)
    return {"dropped": dropped_per_s, "cpu_us": cpu_per_session, "recorded": [float(i)]}


def bench_ingest(ws: Workspace, plan: Plan) -> dict[str, Any]:
    rate = 200 if plan.tiny else INGEST_RATE
    window = 3.0 if plan.tiny else INGEST_WINDOW_S
    path = ws.fresh_dir("telemetry-ingest") / "telemetry.db"
    result = trio.run(_ingest, path, rate, window)
    logger.info(
        "ingest %d/s for %gs: %d dropped, writer %.1f us/session",
        rate,
        window,
        sum(result["dropped"]),
        sorted(result["cpu_us"])[len(result["cpu_us"]) // 2] if result["cpu_us"] else -1,
    )
    parameters = {"rate_per_s": rate, "window_s": window, "sessions": int(result["recorded"][0])}
    return {
        "ingest_dropped_per_s": entry(
            parameters={**parameters, "measures": "sessions dropped in each second"},
            unit="sessions",
            samples=result["dropped"] or [0.0],
            targets=[Target("max", "<=", 0, "sessions")],
            applies=not plan.tiny,
        ),
        "ingest_writer_cpu_us_per_session": entry(
            parameters={
                **parameters,
                "measures": "writer thread CPU (pthread clock) per committed session, per second",
            },
            unit="us",
            samples=result["cpu_us"] or [0.0],
        ),
    }


def _build_store(path: Path, count: int) -> None:
    """``count`` sessions over the last 7 days, written by the store's own writer."""
    rng = random.Random(2)
    now_ms = int(time.time() * 1000)
    span_ms = 7 * 86_400_000
    chunk = 20_000
    recorder = TelemetryRecorder(capacity=chunk, batch_size=chunk)
    writer = SessionWriter(path, recorder, retention_s=30 * 86400.0, max_sessions=count * 2)
    writer.open()
    written = 0
    while written < count:
        n = min(chunk, count - written)
        # Oldest first, as they would arrive.
        for k in range(n):
            i = written + k
            recorder.record(_session(i, now_ms - span_ms + span_ms * i // count, rng))
        writer.write(recorder.take(n))
        written += n
    writer.stop()
    writer.run()


def bench_queries(ws: Workspace, plan: Plan) -> dict[str, Any]:
    count = 5_000 if plan.tiny else QUERY_SESSIONS
    repeats = 5 if plan.tiny else QUERY_REPEATS
    offset = count // 10 if plan.tiny else DEEP_OFFSET
    path = ws.fresh_dir("telemetry-query") / "telemetry.db"
    started = time.perf_counter()
    _build_store(path, count)
    build_s = time.perf_counter() - started
    size = path.stat().st_size
    logger.info("telemetry store of %d sessions: %.0f s, %.0f MB", count, build_s, size / 1e6)
    reader = SessionReader(path)
    rng = random.Random(3)
    now_ms = int(time.time() * 1000)

    def timed(make: Any) -> tuple[list[float], int]:
        samples, matched = [], 0
        reader.query(make())  # warm the page cache and the statement cache
        for _ in range(repeats):
            query = make()
            t0 = time.perf_counter()
            page = reader.query(query)
            samples.append((time.perf_counter() - t0) * 1000)
            matched = page.total_count
        return samples, matched

    try:
        filtered, filtered_matches = timed(
            lambda: SessionQuery(
                tenant_id=rng.choice(_TENANTS),
                decision_name=rng.choice(DECISION_NAMES),
                start_time_ms=now_ms - 3_600_000,
                limit=50,
            )
        )
        newest, _ = timed(lambda: SessionQuery(limit=50))
        deep, _ = timed(lambda: SessionQuery(limit=50, offset=offset))
    finally:
        reader.close()
    common = {"sessions": count, "repeats": repeats, "db_bytes": size, "build_s": round(build_s, 1)}
    applies = not plan.tiny
    return {
        "query_tenant_decision_last_hour_50": entry(
            parameters={
                **common,
                "matches_last_repeat": filtered_matches,
                "measures": "page of 50 + total_count, random tenant and decision",
            },
            unit="ms",
            samples=filtered,
            targets=[Target("median", "<=", FILTER_TARGET_MS, "ms")],
            applies=applies,
        ),
        "query_newest_50": entry(
            parameters={**common, "measures": "unfiltered newest page of 50 + total_count"},
            unit="ms",
            samples=newest,
            targets=[Target("median", "<=", NEWEST_TARGET_MS, "ms")],
            applies=applies,
        ),
        "query_deep_page": entry(
            parameters={**common, "offset": offset, "measures": "page of 50 at the offset"},
            unit="ms",
            samples=deep,
        ),
    }


def run_telemetry(ws: Workspace, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out.update(bench_ingest(ws, plan))
    out.update(bench_queries(ws, plan))
    return out
