"""The telemetry database file: schema, connections, and what to do with a bad file.

One SQLite file in WAL mode. The ``sessions`` table has one indexed column per query
filter (tenant, agent, decision, decision name, layer, time), the summary columns a
``QueryTelemetry`` page needs, and the session JSON. ``session_count`` holds the row
count, kept by triggers, so an unfiltered page does not count a million rows.
``PRAGMA user_version`` is the schema version.

Everything here is blocking and runs in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = [
    "SCHEMA_VERSION",
    "TelemetryDatabaseError",
    "connect",
    "database_bytes",
    "is_corruption",
    "move_aside",
    "open_database",
    "sibling_files",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
#: What the service's files may be: read and written by their owner only.
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
#: How long a connection waits for another one's write lock before it gives up.
BUSY_TIMEOUT_MS: Final = 5000
PAGE_SIZE: Final = 16384

_SCHEMA: Final = """
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    timestamp_ms INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    layer TEXT NOT NULL,
    final_decision INTEGER NOT NULL,
    decision_name TEXT NOT NULL,
    rules_evaluated INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    intent_summary TEXT NOT NULL,
    deciding_rule_id TEXT NOT NULL,
    session_json TEXT NOT NULL
);
CREATE INDEX sessions_by_time ON sessions (timestamp_ms);
CREATE INDEX sessions_by_tenant ON sessions (tenant_id, timestamp_ms);
CREATE INDEX sessions_by_agent ON sessions (agent_id, timestamp_ms);
CREATE INDEX sessions_by_layer ON sessions (layer, timestamp_ms);
CREATE INDEX sessions_by_decision ON sessions (final_decision, timestamp_ms);
CREATE INDEX sessions_by_decision_name ON sessions (decision_name, timestamp_ms);
CREATE INDEX sessions_by_tenant_decision ON sessions (tenant_id, decision_name, timestamp_ms);
CREATE TABLE session_count (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO session_count (id, n) VALUES (1, 0);
CREATE TRIGGER sessions_counted_in AFTER INSERT ON sessions
    BEGIN UPDATE session_count SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER sessions_counted_out AFTER DELETE ON sessions
    BEGIN UPDATE session_count SET n = n - 1 WHERE id = 1; END;
"""
_TABLES: Final = frozenset({"sessions", "session_count"})


class TelemetryDatabaseError(Exception):
    """The telemetry database cannot be used (``str()`` says why and where)."""


def sibling_files(path: Path) -> tuple[Path, Path]:
    """The WAL and shared-memory files SQLite keeps next to ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def database_bytes(path: Path) -> int:
    """Bytes of the database and its WAL on disk (0 for what does not exist)."""
    total = 0
    for file in (path, sibling_files(path)[0]):
        with contextlib.suppress(OSError):
            total += file.stat().st_size
    return total


def is_corruption(exc: BaseException) -> bool:
    """True for errors that say the file is damaged or not a database at all."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection usable from any one thread at a time, WAL mode, our pragmas.

    Autocommit mode (``isolation_level=None``): transactions are explicit.
    """
    if readonly:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
        )
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if readonly:
            conn.execute("PRAGMA query_only = 1")
        else:
            # NORMAL in WAL mode: a commit is safe against a process crash (SIGKILL); only
            # a power cut can lose the last commits, never corrupt the file.
            conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _create_file(path: Path) -> None:
    """Create ``path`` (and a missing directory) with owner-only modes.

    SQLite gives its WAL and shared-memory files the main file's mode, so creating
    the main file 0600 first covers all three.
    """
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    os.close(fd)


def _check_mode(path: Path) -> None:
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise TelemetryDatabaseError(
            f"refusing telemetry database {str(path)!r}: owned by uid {st.st_uid}, "
            f"not by this process's uid {os.geteuid()}"
        )
    if st.st_mode & 0o077:
        # Sessions may hold user data: tighten rather than refuse.
        os.chmod(path, FILE_MODE)


def _schema_state(conn: sqlite3.Connection) -> str:
    """``"empty"``, ``"current"``, or why the file is not ours."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version == 0 and not names:
        return "empty"
    if version == SCHEMA_VERSION and names >= _TABLES:
        return "current"
    if version > SCHEMA_VERSION:
        return f"written by a newer guardrefresh (schema version {version}, this one knows {SCHEMA_VERSION})"
    return (
        f"not a guardrefresh telemetry database (schema version {version}, tables {sorted(names)})"
    )


def move_aside(path: Path, reason: str) -> Path:
    """Rename ``path`` (and its WAL/shm files) to ``<name>.corrupt-<timestamp>``; log it once."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    for sibling, suffix in zip(sibling_files(path), ("-wal", "-shm"), strict=True):
        with contextlib.suppress(FileNotFoundError):
            os.replace(sibling, target.with_name(target.name + suffix))
    logger.error(
        "Telemetry database %s is unusable (%s): moved aside to %s; starting a fresh one",
        path,
        reason,
        target,
    )
    return target


def _initialise(conn: sqlite3.Connection) -> None:
    # A session row is 2-3 KB: in 4 KiB pages only one fits, wasting a third of the file.
    # Takes effect only on a new, empty database (before WAL is switched on).
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise TelemetryDatabaseError(f"cannot switch the telemetry database to WAL (got {mode})")
    state = _schema_state(conn)
    if state == "empty":
        # One transaction (the script's own): a crash leaves an empty file, never half a schema.
        conn.executescript(
            f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )
    elif state != "current":
        raise _Foreign(state)


class _Foreign(Exception):
    pass


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the telemetry database for writing; returns the connection.

    A file that is corrupt, not SQLite, or not ours is moved aside (see
    :func:`move_aside`) and a fresh database takes its place. Raises
    :class:`TelemetryDatabaseError` when the file cannot be used at all (permissions,
    read-only or full file system, owned by another user).
    """
    for attempt in range(2):
        try:
            if not path.exists():
                _create_file(path)
            _check_mode(path)
        except OSError as exc:
            raise TelemetryDatabaseError(
                f"cannot create telemetry database {str(path)!r}: {exc.strerror or exc}"
            ) from None
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(path)
            _initialise(conn)
            return conn
        except (_Foreign, sqlite3.DatabaseError) as exc:
            if conn is not None:
                conn.close()
            foreign = isinstance(exc, _Foreign)
            if attempt == 0 and (foreign or is_corruption(exc)):
                try:
                    move_aside(path, str(exc))
                except OSError as move_exc:
                    raise TelemetryDatabaseError(
                        f"telemetry database {str(path)!r} is unusable ({exc}) and cannot be "
                        f"moved aside: {move_exc.strerror or move_exc}"
                    ) from None
                continue
            raise TelemetryDatabaseError(
                f"cannot open telemetry database {str(path)!r}: {exc}"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
