"""The fleet's telemetry writer: a Trio task draining the recorder into PostgreSQL.

The same hand-over as the SQLite store (Enforce appends to the bounded
:class:`~._recorder.TelemetryRecorder` and returns); this task takes batches off it
every batch window, serialises them in a worker thread, and writes each batch as one
statement in one transaction. Every replica writes into the same table, so a
``QueryTelemetry`` on any of them sees the whole fleet.

Between batches it prunes sessions past retention or over the cap, one small
transaction at a time (each under :data:`~._writer.PRUNE_STEP_BUDGET_S`), and only on
one replica at a time: a prune step takes an advisory lock and skips when another
replica holds it.

Outages degrade, they do not stop: a batch that cannot be written is dropped and
counted, a WARNING is logged at most once per :attr:`PostgresSessionWriter.warn_interval_s`,
and the next attempt waits :attr:`PostgresSessionWriter.retry_interval_s` (meanwhile
sessions wait in the queue, and those it cannot hold are dropped and counted there).
The first batch written after an outage logs the recovery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio

from ._defaults import BATCH_WINDOW_S, MAX_SESSIONS, RETENTION_S
from ._degradation import Degradation
from ._pg_schema import PRUNE_LOCK_KEY, migrate
from ._recorder import TelemetryRecorder
from ._session import EnforcementSession
from ._session_row import session_row
from ._store import EngineLike
from ._writer import PRUNE_STEP_BUDGET_S
from ._writer_counters import WriterCounters

__all__ = ["PostgresSessionWriter", "session_columns"]

logger = logging.getLogger(__name__)

_PRUNE_CHUNK_MIN: Final = 50
_PRUNE_CHUNK_MAX: Final = 20_000
#: Column types of the batch insert (``unnest`` of one array per column).
_TYPES: Final = (
    "text",
    "bigint",
    "text",
    "text",
    "text",
    "smallint",
    "text",
    "integer",
    "bigint",
    "text",
    "text",
    "text",
)
_INSERT: Final = (
    "INSERT INTO telemetry_sessions (session_id, timestamp_ms, tenant_id, agent_id, layer, "
    "final_decision, decision_name, rules_evaluated, duration_us, intent_summary, "
    "deciding_rule_id, session_json) "
    "SELECT * FROM unnest("
    + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_TYPES, start=1))
    + ") ON CONFLICT (session_id) DO UPDATE SET "
    "timestamp_ms = excluded.timestamp_ms, tenant_id = excluded.tenant_id, "
    "agent_id = excluded.agent_id, layer = excluded.layer, "
    "final_decision = excluded.final_decision, decision_name = excluded.decision_name, "
    "rules_evaluated = excluded.rules_evaluated, duration_us = excluded.duration_us, "
    "intent_summary = excluded.intent_summary, deciding_rule_id = excluded.deciding_rule_id, "
    "session_json = excluded.session_json"
)
_PRUNE_OLD: Final = (
    "WITH gone AS (DELETE FROM telemetry_sessions WHERE id IN (SELECT id FROM "
    "telemetry_sessions WHERE timestamp_ms < $1 ORDER BY timestamp_ms LIMIT $2) RETURNING 1) "
    "SELECT count(*) FROM gone"
)
_PRUNE_OLDEST: Final = (
    "WITH gone AS (DELETE FROM telemetry_sessions WHERE id IN (SELECT id FROM "
    "telemetry_sessions ORDER BY timestamp_ms LIMIT $1) RETURNING 1) SELECT count(*) FROM gone"
)
_COUNT: Final = "SELECT coalesce(sum(n), 0)::bigint FROM telemetry_session_count"

Columns = list[list[Any]]


def session_columns(batch: Sequence[EnforcementSession]) -> Columns:
    """The batch as one list per column (serialises it: run it in a worker thread).

    A session id seen twice keeps its last session (one statement cannot upsert the
    same row twice).
    """
    rows = {s.session_id: session_row(s) for s in batch}
    columns: Columns = [[] for _ in _TYPES]
    for row in rows.values():
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


async def _insert(conn: Any, columns: Columns) -> None:
    async with conn.transaction():
        await conn.execute(_INSERT, *columns)


async def _prune(conn: Any, cutoff_ms: int, chunk: int, max_sessions: int) -> int | None:
    """One prune step (asyncio code); None when another replica is pruning."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK_KEY):
            return None
        deleted = int(await conn.fetchval(_PRUNE_OLD, cutoff_ms, chunk))
        if deleted < chunk:
            excess = min(int(await conn.fetchval(_COUNT)) - max_sessions, chunk - deleted)
            if excess > 0:
                deleted += int(await conn.fetchval(_PRUNE_OLDEST, excess))
        return deleted


async def _table_bytes(conn: Any) -> int:
    return int(await conn.fetchval("SELECT pg_total_relation_size('telemetry_sessions')"))


class PostgresSessionWriter:
    """Runs :meth:`run` as a Trio task until :meth:`stop`; see the module doc."""

    warn_interval_s: float = 60.0
    retry_interval_s: float = 1.0
    #: How often the table's size (a metric) is read again.
    size_interval_s: float = 30.0

    def __init__(
        self,
        engine: EngineLike,
        recorder: TelemetryRecorder,
        *,
        batch_window_s: float = BATCH_WINDOW_S,
        retention_s: float = RETENTION_S,
        max_sessions: int = MAX_SESSIONS,
        prune_interval_s: float = 10.0,
        flush_timeout_s: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.recorder = recorder
        self.batch_window_s = batch_window_s
        self.retention_s = retention_s
        self.max_sessions = max_sessions
        self.prune_interval_s = prune_interval_s
        self.flush_timeout_s = flush_timeout_s
        self.counters = WriterCounters()
        self._wall_clock = wall_clock
        self._stopping = trio.Event()
        self._schema_ready = False
        self._next_attempt = -float("inf")
        self._next_prune = -float("inf")
        self._next_size = -float("inf")
        self._prune_chunk = 500
        self._health = Degradation(self.counters, lambda: self.warn_interval_s)

    # --------------------------------------------------------------- lifecycle ---

    def stop(self) -> None:
        """Ask :meth:`run` to write what is queued and return."""
        self._stopping.set()

    async def run(self) -> None:
        """The task's body: returns after :meth:`stop`, once the queue is written.

        On the way out (stopped, cancelled or failed) the recorder is closed and what
        it holds is written, for at most :attr:`flush_timeout_s` even when cancelled;
        sessions that could not be written by then are counted as dropped.
        """
        recorder = self.recorder
        try:
            await self._ensure_schema()
            while not self._stopping.is_set():
                wait = 0.0 if recorder.depth >= recorder.batch_size else self.batch_window_s
                with trio.move_on_after(wait):
                    await self._stopping.wait()
                await self._drain()
                if not self._stopping.is_set():
                    await self._housekeeping()
        finally:
            recorder.close()
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.flush_timeout_s
                self._next_attempt = -float("inf")
                await self._drain()
            left = recorder.take(recorder.depth)
            if left:
                self._health.drop(len(left), "telemetry shut down before PostgreSQL took them")

    async def _drain(self) -> None:
        recorder = self.recorder
        while recorder.depth and trio.current_time() >= self._next_attempt:
            batch = recorder.take(recorder.batch_size)
            try:
                await self.write(batch)
            except trio.Cancelled:
                self._health.drop(len(batch), "telemetry write cancelled")
                raise

    # ------------------------------------------------------------------ writes ---

    async def write(self, batch: Sequence[EnforcementSession]) -> bool:
        """Write ``batch`` in one transaction; False (batch dropped and counted) on failure."""
        if not batch:
            return True
        if not self._schema_ready and not await self._ensure_schema():
            self._health.drop(len(batch), "telemetry tables unavailable")
            return False
        try:
            columns = await trio.to_thread.run_sync(session_columns, batch)
        except Exception:
            logger.exception("Telemetry: cannot serialise a batch of %d sessions", len(batch))
            self._health.drop(len(batch), "serialisation failed")
            return True
        started = time.perf_counter()
        try:
            await self.engine.run(_insert, columns)
        except Exception as exc:
            self._failed()
            self._health.drop(len(batch), f"cannot write to PostgreSQL: {_describe(exc)}")
            return False
        self.counters.observe_commit(time.perf_counter() - started)
        self.counters.committed += len(batch)
        self._health.recovered()
        return True

    async def _ensure_schema(self) -> bool:
        try:
            await self.engine.run(migrate)
        except Exception as exc:
            self._failed()
            self._health.degraded(f"cannot prepare the telemetry tables: {_describe(exc)}")
            return False
        self._schema_ready = True
        return True

    def _failed(self) -> None:
        # The tables may be gone (a restored database): check them on the next attempt.
        self._schema_ready = False
        self._next_attempt = trio.current_time() + self.retry_interval_s

    # ----------------------------------------------------------------- pruning ---

    async def _housekeeping(self) -> None:
        now = trio.current_time()
        if not self._schema_ready or now < self._next_attempt:
            return
        try:
            if now >= self._next_prune:
                finished = await self.prune_step()
                # More to delete: come back as soon as the queue allows.
                self._next_prune = now + (self.prune_interval_s if finished else 0.0)
            if now >= self._next_size:
                self.counters.database_bytes = await self.engine.run(_table_bytes)
                self._next_size = now + self.size_interval_s
        except Exception as exc:
            self._failed()
            self._next_prune = now + self.prune_interval_s
            self._health.degraded(f"pruning the telemetry table failed: {_describe(exc)}")

    async def prune_step(self) -> bool:
        """Delete one chunk past retention or over the cap; True when none is left (or
        another replica is pruning). Raises when PostgreSQL cannot be reached.

        The chunk size adapts so that one step stays under :data:`PRUNE_STEP_BUDGET_S`.
        """
        cutoff_ms = int((self._wall_clock() - self.retention_s) * 1000)
        chunk = self._prune_chunk
        started = time.perf_counter()
        deleted = await self.engine.run(_prune, cutoff_ms, chunk, self.max_sessions)
        if deleted is None:
            return True
        elapsed = time.perf_counter() - started
        if elapsed > PRUNE_STEP_BUDGET_S / 2:
            self._prune_chunk = max(_PRUNE_CHUNK_MIN, chunk // 2)
        elif elapsed < PRUNE_STEP_BUDGET_S / 8 and deleted == chunk:
            self._prune_chunk = min(_PRUNE_CHUNK_MAX, chunk * 2)
        self.counters.pruned += deleted
        return bool(deleted < chunk)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
