"""The writer thread: drains the recorder's queue into SQLite, prunes, survives faults.

One thread, one connection. It waits for sessions, gives more of them up to the batch
window to arrive, and commits them in one transaction per batch (so a SIGKILL loses at
most the sessions of the window in progress; WAL keeps the file consistent). Between
batches it prunes by age and by count, one small transaction at a time, each kept
under :data:`PRUNE_STEP_BUDGET_S` and never while sessions wait.

Faults degrade, they do not stop: a write that fails (disk full, read-only file system)
drops its batch, counts the sessions as dropped and logs at most one WARNING per
:attr:`SessionWriter.warn_interval_s`; the next batch simply tries again. A database
that cannot be opened is retried every :attr:`SessionWriter.reopen_interval_s`. A file
found corrupt while running is moved aside and replaced by a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from ._checkpoint import CHECKPOINT_WAL_BYTES
from ._database import (
    TelemetryDatabaseError,
    database_bytes,
    is_corruption,
    move_aside,
    open_database,
    sibling_files,
    transaction,
)
from ._defaults import BATCH_WINDOW_S, MAX_SESSIONS, RETENTION_S
from ._degradation import Degradation
from ._recorder import TelemetryRecorder
from ._session import EnforcementSession
from ._session_row import session_row
from ._writer_counters import WriterCounters

__all__ = ["PRUNE_STEP_BUDGET_S", "WRITER_NICE", "SessionWriter"]

logger = logging.getLogger(__name__)

#: Longest a single prune transaction should hold the writer.
PRUNE_STEP_BUDGET_S: Final = 0.05
#: How much lower the service's writer thread runs than the rest (nice steps).
WRITER_NICE: Final = 10
_PRUNE_CHUNK_MIN: Final = 50
_PRUNE_CHUNK_MAX: Final = 20_000

_UPSERT: Final = """
INSERT INTO sessions (session_id, timestamp_ms, tenant_id, agent_id, layer, final_decision,
    decision_name, rules_evaluated, duration_us, intent_summary, deciding_rule_id, session_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (session_id) DO UPDATE SET
    timestamp_ms = excluded.timestamp_ms, tenant_id = excluded.tenant_id,
    agent_id = excluded.agent_id, layer = excluded.layer,
    final_decision = excluded.final_decision, decision_name = excluded.decision_name,
    rules_evaluated = excluded.rules_evaluated, duration_us = excluded.duration_us,
    intent_summary = excluded.intent_summary, deciding_rule_id = excluded.deciding_rule_id,
    session_json = excluded.session_json
"""
_PRUNE_OLD: Final = (
    "DELETE FROM sessions WHERE id IN "
    "(SELECT id FROM sessions WHERE timestamp_ms < ? ORDER BY timestamp_ms LIMIT ?)"
)
_PRUNE_OLDEST: Final = (
    "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions ORDER BY timestamp_ms LIMIT ?)"
)


def _lower_priority(steps: int) -> Callable[[], None]:
    """Lower the calling thread's CPU priority by ``steps`` nice steps (Linux keeps the
    nice value per thread); returns what restores it, as far as the process may (raising
    a priority again needs ``CAP_SYS_NICE``: without it the thread stays lower).

    Why the writer does this: it then uses the CPU time Enforce leaves idle instead of
    competing with it. When Enforce keeps every CPU busy the queue fills, and sessions
    are dropped and counted rather than Enforce slowing down.
    """
    if steps <= 0:
        return lambda: None
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, before + steps)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed
        logger.debug("Telemetry writer keeps its CPU priority: %s", exc)
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, before)

    return restore


class SessionWriter:
    """Runs :meth:`run` in a thread of its own until :meth:`stop`; see the module doc."""

    warn_interval_s: float = 60.0
    reopen_interval_s: float = 5.0

    def __init__(
        self,
        path: Path,
        recorder: TelemetryRecorder,
        *,
        batch_window_s: float = BATCH_WINDOW_S,
        retention_s: float = RETENTION_S,
        max_sessions: int = MAX_SESSIONS,
        prune_interval_s: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
        on_reopen: Callable[[], None] | None = None,
        request_checkpoint: Callable[[], None] | None = None,
        nice: int = 0,
    ) -> None:
        self.path = path
        #: Nice steps :meth:`run` lowers its thread's CPU priority by, for its duration.
        self.nice = nice
        self.recorder = recorder
        self.batch_window_s = batch_window_s
        self.retention_s = retention_s
        self.max_sessions = max_sessions
        self.prune_interval_s = prune_interval_s
        self.counters = WriterCounters()
        self._wall_clock = wall_clock
        self._on_reopen = on_reopen
        #: With a checkpointer, this connection never checkpoints (its fsync would stall
        #: the writer): it asks the checkpointer instead when the WAL has grown.
        self._request_checkpoint = request_checkpoint
        self._wal = sibling_files(path)[0]
        self._conn: sqlite3.Connection | None = None
        self._stopping = threading.Event()
        self._next_open = 0.0
        self._next_prune = 0.0
        self._prune_chunk = 500
        self._health = Degradation(self.counters, lambda: self.warn_interval_s)
        #: ``threading.get_ident()`` of the thread running :meth:`run` (its CPU clock
        #: is what the benchmark reads), None before it started.
        self.thread_ident: int | None = None
        #: Its ``threading.get_native_id()`` (the kernel's thread id).
        self.native_id: int | None = None
        self.checkpoints_requested = 0

    # --------------------------------------------------------------- lifecycle ---

    def open(self) -> bool:
        """Try to open the database now (blocking); False if it cannot be used yet."""
        try:
            self._conn = open_database(self.path)
        except TelemetryDatabaseError as exc:
            self._health.degraded(f"{exc}; retrying every {self.reopen_interval_s:g}s")
            self._next_open = time.monotonic() + self.reopen_interval_s
            return False
        self._next_prune = 0.0
        if self._request_checkpoint is not None:
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        # After a checkpoint, a WAL larger than this is cut back when it restarts.
        self._conn.execute(f"PRAGMA journal_size_limit = {4 * CHECKPOINT_WAL_BYTES}")
        self.counters.database_bytes = database_bytes(self.path)
        if self._on_reopen is not None:
            self._on_reopen()
        self._health.recovered()
        return True

    def stop(self) -> None:
        """Ask :meth:`run` to write what is queued and return (any thread)."""
        self._stopping.set()
        self.recorder.wake.set()
        self.recorder.batch_ready.set()

    def run(self) -> None:
        """The thread's body: returns after :meth:`stop`, once the queue is written.

        The recorder is closed on the way out, so nothing recorded afterwards waits
        for a writer that is gone (it is counted as dropped instead).
        """
        recorder = self.recorder
        self.thread_ident = threading.get_ident()
        self.native_id = threading.get_native_id()
        restore = _lower_priority(self.nice)
        try:
            if self._conn is None:
                self.open()
            while True:
                recorder.wake.wait(self._idle_timeout())
                recorder.wake.clear()
                if recorder.depth and not self._stopping.is_set():
                    # Let a batch gather: fewer, larger transactions cost less per session.
                    recorder.batch_ready.wait(self.batch_window_s)
                recorder.batch_ready.clear()
                while recorder.depth:
                    self.write(recorder.take(recorder.batch_size))
                if self._stopping.is_set():
                    break
                self._housekeeping()
        finally:
            recorder.close()
            # A session recorded between the last take and close() would wait forever.
            self.write(recorder.take(recorder.depth))
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            restore()

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        due = self._next_open if self._conn is None else self._next_prune
        return min(max(due - now, 0.0), self.prune_interval_s) + 0.001

    # ------------------------------------------------------------------ writes ---

    def write(self, batch: Sequence[EnforcementSession]) -> None:
        """Commit ``batch`` in one transaction now (blocking; from the writer's thread, or
        instead of :meth:`run`). A failure drops and counts the batch, never raises."""
        if not batch:
            return
        if self._conn is None and (time.monotonic() < self._next_open or not self.open()):
            self._health.drop(len(batch), "telemetry database unavailable")
            return
        conn = self._conn
        assert conn is not None
        try:
            rows = []
            for session in batch:
                rows.append(session_row(session))
                # Hand the GIL over between sessions: building a row is ~0.1-0.2 ms of
                # Python, and an Enforce call waking up on the Trio thread must not wait
                # for a whole batch of them (up to the 5 ms switch interval).
                time.sleep(0)
        except Exception:
            logger.exception("Telemetry: cannot serialise a batch of %d sessions", len(batch))
            self._health.drop(len(batch), "serialisation failed")
            return
        started = time.perf_counter()
        try:
            with transaction(conn):
                conn.executemany(_UPSERT, rows)
        except sqlite3.Error as exc:
            self._failed(exc)
            self._health.drop(len(batch), f"cannot write telemetry database {self.path}: {exc}")
            return
        self.counters.observe_commit(time.perf_counter() - started)
        self.counters.committed += len(batch)
        self.counters.database_bytes = database_bytes(self.path)
        if self._request_checkpoint is not None and self._wal_bytes() > CHECKPOINT_WAL_BYTES:
            self.checkpoints_requested += 1
            self._request_checkpoint()
        self._health.recovered()

    def _wal_bytes(self) -> int:
        try:
            return self._wal.stat().st_size
        except OSError:
            return 0

    def _failed(self, exc: sqlite3.Error) -> None:
        if not is_corruption(exc) or self._conn is None:
            return
        self._conn.close()
        self._conn = None
        try:
            move_aside(self.path, str(exc))
        except OSError as move_exc:
            logger.warning("Telemetry: cannot move the corrupt database aside: %s", move_exc)
        self._next_open = 0.0

    # ----------------------------------------------------------------- pruning ---

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._conn is None:
            if now >= self._next_open:
                self.open()
            return
        if now < self._next_prune:
            return
        try:
            finished = self.prune_step()
        except sqlite3.Error as exc:
            self._failed(exc)
            self._health.degraded(f"pruning the telemetry database failed: {exc}")
            finished = True
        # More to delete: come back as soon as the queue allows.
        self._next_prune = now + (self.prune_interval_s if finished else 0.0)

    def prune_step(self) -> bool:
        """Delete one chunk of sessions past retention or over the cap; True when none is left.

        The chunk size adapts so that one step (one transaction) stays under
        :data:`PRUNE_STEP_BUDGET_S`.
        """
        conn = self._conn
        if conn is None:
            return True
        cutoff_ms = int((self._wall_clock() - self.retention_s) * 1000)
        chunk = self._prune_chunk
        started = time.perf_counter()
        with transaction(conn):
            deleted = conn.execute(_PRUNE_OLD, (cutoff_ms, chunk)).rowcount
            if deleted < chunk:
                count = conn.execute("SELECT n FROM session_count WHERE id = 1").fetchone()[0]
                excess = min(count - self.max_sessions, chunk - deleted)
                if excess > 0:
                    deleted += conn.execute(_PRUNE_OLDEST, (excess,)).rowcount
        elapsed = time.perf_counter() - started
        if elapsed > PRUNE_STEP_BUDGET_S / 2:
            self._prune_chunk = max(_PRUNE_CHUNK_MIN, chunk // 2)
        elif elapsed < PRUNE_STEP_BUDGET_S / 8 and deleted == chunk:
            self._prune_chunk = min(_PRUNE_CHUNK_MAX, chunk * 2)
        if deleted:
            self.counters.pruned += deleted
            self.counters.database_bytes = database_bytes(self.path)
        return deleted < chunk
