"""The telemetry store of a fleet: :func:`open_postgres_telemetry` and :class:`PostgresTelemetry`.

In fleet mode every replica writes its sessions into one PostgreSQL table, so
``QueryTelemetry`` and ``GetSession`` on any replica see the whole fleet. The store
reaches PostgreSQL only through an engine (:class:`~._store.EngineLike`: the
replication core's asyncpg pool on the trio-asyncio loop); nothing here crosses between
Trio and asyncio by itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import trio

from ._defaults import BATCH_WINDOW_S, MAX_SESSIONS, RETENTION_S
from ._pg_reader import PostgresSessionReader
from ._pg_writer import PostgresSessionWriter
from ._query import QueryPage, SessionQuery
from ._recorder import DEFAULT_QUEUE_CAPACITY, TelemetryRecorder
from ._session import EnforcementSession
from ._store import DEFAULT_BATCH_SIZE, EngineLike, TelemetryStats

__all__ = ["PostgresTelemetry", "open_postgres_telemetry"]

logger = logging.getLogger(__name__)


class PostgresTelemetry:
    """Record sessions (never blocks) and read the fleet's back; a :class:`TelemetryStore`."""

    location = "PostgreSQL (the fleet's database)"

    def __init__(
        self,
        recorder: TelemetryRecorder,
        writer: PostgresSessionWriter,
        reader: PostgresSessionReader,
    ) -> None:
        self._recorder = recorder
        self._writer = writer
        self._reader = reader

    @property
    def writer(self) -> PostgresSessionWriter:
        """The writer (its counters, for benchmarks and diagnostics)."""
        return self._writer

    def record(self, session: EnforcementSession) -> bool:
        """Queue ``session`` for writing; O(1), never blocks. False if it was dropped."""
        return self._recorder.record(session)

    async def query(self, query: SessionQuery) -> QueryPage:
        """A page of the fleet's summaries; raises :class:`TelemetryUnavailableError`
        while PostgreSQL cannot be read. Cancellation abandons the query."""
        return await self._reader.query(query)

    async def get(self, session_id: str) -> str | None:
        """The session JSON (whichever replica recorded it), or None for an unknown id."""
        return await self._reader.get(session_id)

    def stats(self) -> TelemetryStats:
        return TelemetryStats.of(self._recorder, self._writer.counters)


@contextlib.asynccontextmanager
async def open_postgres_telemetry(
    engine: EngineLike,
    *,
    batch_window_s: float = BATCH_WINDOW_S,
    retention_s: float = RETENTION_S,
    max_sessions: int = MAX_SESSIONS,
    queue_capacity: int = DEFAULT_QUEUE_CAPACITY,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prune_interval_s: float = 10.0,
    flush_timeout_s: float = 5.0,
) -> AsyncIterator[PostgresTelemetry]:
    """Run the fleet's telemetry store on ``engine`` for the block's lifetime.

    Never fails for the database's sake: while PostgreSQL cannot be reached (at start
    or later) sessions are dropped and counted, a WARNING says so at most once a minute,
    reads raise :class:`TelemetryUnavailableError`, and recording resumes by itself
    when it returns. The tables are created or migrated on first contact.
    ``retention_s`` and ``max_sessions`` apply to the whole fleet's table: give every
    replica the same values.

    On exit, however the block ends, the queue is written first, for at most
    ``flush_timeout_s`` (PostgreSQL may be unreachable right then); what is left is
    counted as dropped. ``engine`` must stay open until this returns.
    """
    recorder = TelemetryRecorder(queue_capacity, batch_size=batch_size)
    writer = PostgresSessionWriter(
        engine,
        recorder,
        batch_window_s=batch_window_s,
        retention_s=retention_s,
        max_sessions=max_sessions,
        prune_interval_s=prune_interval_s,
        flush_timeout_s=flush_timeout_s,
    )
    reader = PostgresSessionReader(engine)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_writer, writer)
            try:
                yield PostgresTelemetry(recorder, writer, reader)
            finally:
                writer.stop()
    finally:
        logger.info(
            "Telemetry stopped: %d sessions written to PostgreSQL, %d dropped",
            writer.counters.committed,
            recorder.dropped + writer.counters.dropped,
        )


async def _run_writer(writer: PostgresSessionWriter) -> None:
    try:
        await writer.run()
    except Exception:
        # A bug in the writer must not take Enforce down with it: recording stops
        # (sessions are counted as dropped from now on), the service goes on.
        logger.exception("Telemetry writer failed; recording is off until restart")
