"""WAL checkpoints off the writer's path: a thread of their own with a connection of their own.

SQLite's automatic checkpoint runs inside the commit that crosses the threshold, in the
committing connection: it copies the WAL into the database and fsyncs it. On a busy disk
that fsync can take seconds, long enough for the queue to fill (a 2,000/s benchmark run
dropped 2,180 sessions in one second with it; none with this). The writer's connection therefore
has automatic checkpoints off, and :class:`Checkpointer` runs passive checkpoints (they
never block the writer) whenever the writer says the WAL has grown past
:data:`CHECKPOINT_WAL_BYTES`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Final

from ._database import connect

__all__ = ["CHECKPOINT_WAL_BYTES", "Checkpointer"]

logger = logging.getLogger(__name__)

#: WAL size that asks for a checkpoint.
CHECKPOINT_WAL_BYTES: Final = 16 * 1024 * 1024


class Checkpointer:
    """Runs :meth:`run` in a thread until :meth:`stop`; :meth:`request` from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoints = 0
        self._wanted = threading.Event()
        self._stopping = False

    def request(self) -> None:
        """Ask for a checkpoint soon (cheap; requests while one runs fold into the next)."""
        self._wanted.set()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()

    def run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    if conn is None:
                        conn = connect(self.path)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    # The writer reports telemetry faults; a failed checkpoint is retried
                    # at the next request (with a fresh connection: the file may be new).
                    logger.debug("Telemetry checkpoint failed: %s", exc)
                    if conn is not None:
                        conn.close()
                        conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
