"""The telemetry store of one service: :func:`open_telemetry` and :class:`Telemetry`.

``async with open_telemetry(path, ...) as telemetry:`` opens (or creates, or replaces a
corrupt) database in a worker thread, starts the writer thread, and yields. Enforce
calls :meth:`Telemetry.record`; the gRPC reads await :meth:`Telemetry.query` and
:meth:`Telemetry.get`, which run in worker threads. Leaving the block (normally, by an
error or by cancellation) stops the writer after it has written everything queued: the
sessions of the last moments before a SIGTERM are on disk when the process exits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import overload

import trio

from ._checkpoint import Checkpointer
from ._defaults import BATCH_WINDOW_S, MAX_SESSIONS, RETENTION_S
from ._pg_service import open_postgres_telemetry
from ._query import QueryPage, SessionQuery, SessionReader
from ._recorder import DEFAULT_QUEUE_CAPACITY, TelemetryRecorder
from ._session import EnforcementSession
from ._store import DEFAULT_BATCH_SIZE, EngineLike, TelemetryStats, TelemetryStore
from ._writer import WRITER_NICE, SessionWriter

__all__ = ["DEFAULT_BATCH_SIZE", "Telemetry", "TelemetryStats", "open_telemetry"]

logger = logging.getLogger(__name__)


class Telemetry:
    """Record sessions (never blocks) and read them back (in worker threads)."""

    def __init__(self, recorder: TelemetryRecorder, writer: SessionWriter, reader: SessionReader):
        self._recorder = recorder
        self._writer = writer
        self._reader = reader
        # One reader connection: one query at a time; others wait their turn (in Trio).
        self._read_limiter = trio.CapacityLimiter(1)

    @property
    def path(self) -> Path:
        return self._writer.path

    @property
    def location(self) -> str:
        """Where the sessions are kept (the database file), for log lines."""
        return str(self._writer.path)

    @property
    def writer(self) -> SessionWriter:
        """The writer (its counters and thread, for benchmarks and diagnostics)."""
        return self._writer

    def record(self, session: EnforcementSession) -> bool:
        """Queue ``session`` for writing; O(1), never blocks. False if it was dropped."""
        return self._recorder.record(session)

    async def query(self, query: SessionQuery) -> QueryPage:
        """A page of summaries (see :meth:`SessionReader.query`); runs in a worker thread.

        Raises :class:`TelemetryUnavailableError` when the database cannot be read.
        On cancellation the query is abandoned (its thread finishes on its own).
        """
        return await trio.to_thread.run_sync(
            self._reader.query, query, limiter=self._read_limiter, abandon_on_cancel=True
        )

    async def get(self, session_id: str) -> str | None:
        """The session JSON, or None for an unknown id; runs in a worker thread."""
        return await trio.to_thread.run_sync(
            self._reader.get, session_id, limiter=self._read_limiter, abandon_on_cancel=True
        )

    def stats(self) -> TelemetryStats:
        return TelemetryStats.of(self._recorder, self._writer.counters)


@overload
def open_telemetry(
    path: Path,
    *,
    batch_window_s: float = ...,
    retention_s: float = ...,
    max_sessions: int = ...,
    queue_capacity: int = ...,
    batch_size: int = ...,
    prune_interval_s: float = ...,
    engine: None = None,
) -> contextlib.AbstractAsyncContextManager[Telemetry]: ...
@overload
def open_telemetry(
    path: Path,
    *,
    batch_window_s: float = ...,
    retention_s: float = ...,
    max_sessions: int = ...,
    queue_capacity: int = ...,
    batch_size: int = ...,
    prune_interval_s: float = ...,
    engine: EngineLike,
) -> contextlib.AbstractAsyncContextManager[TelemetryStore]: ...
def open_telemetry(
    path: Path,
    *,
    batch_window_s: float = BATCH_WINDOW_S,
    retention_s: float = RETENTION_S,
    max_sessions: int = MAX_SESSIONS,
    queue_capacity: int = DEFAULT_QUEUE_CAPACITY,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prune_interval_s: float = 10.0,
    engine: EngineLike | None = None,
) -> contextlib.AbstractAsyncContextManager[TelemetryStore]:
    """The telemetry store for the block: SQLite at ``path``, or with ``engine`` (fleet
    mode) the fleet's PostgreSQL (:func:`open_postgres_telemetry`; ``path`` unused).

    Both behave alike: recording never blocks, reads and writes degrade rather than
    fail while the database cannot be used, and leaving the block writes the queue.
    """
    if engine is not None:
        return open_postgres_telemetry(
            engine,
            batch_window_s=batch_window_s,
            retention_s=retention_s,
            max_sessions=max_sessions,
            queue_capacity=queue_capacity,
            batch_size=batch_size,
            prune_interval_s=prune_interval_s,
        )
    return _open_sqlite_telemetry(
        path,
        batch_window_s=batch_window_s,
        retention_s=retention_s,
        max_sessions=max_sessions,
        queue_capacity=queue_capacity,
        batch_size=batch_size,
        prune_interval_s=prune_interval_s,
    )


@contextlib.asynccontextmanager
async def _open_sqlite_telemetry(
    path: Path,
    *,
    batch_window_s: float,
    retention_s: float,
    max_sessions: int,
    queue_capacity: int,
    batch_size: int,
    prune_interval_s: float,
) -> AsyncIterator[Telemetry]:
    """Open the telemetry store at ``path`` and run its writer for the block's lifetime.

    Never fails for the database's sake: a corrupt or foreign file is moved aside and
    replaced, and a database that cannot be opened (permissions, read-only or full
    file system) leaves telemetry degraded (sessions dropped and counted, a WARNING)
    until it can be, retried in the background. On exit, however the block ends, the
    queue is written before this returns.
    """
    recorder = TelemetryRecorder(queue_capacity, batch_size=batch_size)
    generation = 0

    def reopened() -> None:
        nonlocal generation
        generation += 1

    checkpointer = Checkpointer(path)
    writer = SessionWriter(
        path,
        recorder,
        batch_window_s=batch_window_s,
        retention_s=retention_s,
        max_sessions=max_sessions,
        prune_interval_s=prune_interval_s,
        on_reopen=reopened,
        request_checkpoint=checkpointer.request,
        # Below the request path: the writer takes the CPU time Enforce leaves idle.
        nice=WRITER_NICE,
    )
    reader = SessionReader(path, generation=lambda: generation)
    with trio.CancelScope(shield=True):
        # Opening may move a corrupt file aside: let it finish even if cancelled.
        await trio.to_thread.run_sync(writer.open)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_writer, writer, checkpointer)
            nursery.start_soon(_run_checkpointer, checkpointer)
            try:
                yield Telemetry(recorder, writer, reader)
            finally:
                writer.stop()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(reader.close)
        logger.info(
            "Telemetry stopped: %d sessions written, %d dropped",
            writer.counters.committed,
            recorder.dropped + writer.counters.dropped,
        )


async def _run_checkpointer(checkpointer: Checkpointer) -> None:
    with trio.CancelScope(shield=True):
        # Returns once _run_writer has stopped it (after the writer's last commit).
        await trio.to_thread.run_sync(checkpointer.run, limiter=trio.CapacityLimiter(1))


async def _run_writer(writer: SessionWriter, checkpointer: Checkpointer) -> None:
    # Shielded, and the thread not abandoned: even when the block is cancelled before this
    # task first runs, the thread starts and writes the queue; it returns promptly once
    # stop() was called (open_telemetry's finally does).
    try:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.run, limiter=trio.CapacityLimiter(1))
    except Exception:
        # A bug in the writer must not take Enforce down with it: recording stops
        # (sessions are counted as dropped from now on), the service goes on.
        logger.exception("Telemetry writer failed; recording is off until restart")
    finally:
        checkpointer.stop()
