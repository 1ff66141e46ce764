"""Reading sessions back: :class:`SessionQuery` (the filters), pages of summaries, one session.

:class:`SessionReader` holds one read-only connection and is used from worker threads
(one query at a time); it never writes. The filters are the original
``QueryTelemetry``'s (agent, tenant, 0/1 decision, layer, time range) plus a decision
name; pages are newest first and carry the number of all matching sessions.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from ._database import connect, is_corruption
from ._session import DECISION_NAMES, expand_stored_json

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "QUERY_TIME_LIMIT_S",
    "InvalidQueryError",
    "QueryPage",
    "SessionQuery",
    "SessionReader",
    "SessionSummary",
    "TelemetryUnavailableError",
]

_T = TypeVar("_T")

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: A query running longer than this is interrupted (a hostile deep page, say).
QUERY_TIME_LIMIT_S: Final = 10.0


class InvalidQueryError(ValueError):
    """A filter that makes no sense (``str()`` says which and why)."""


class TelemetryUnavailableError(Exception):
    """The telemetry database cannot be read now (``str()`` says why)."""


def _optional_text(_i: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidQueryError(f"{attribute.name} must be a string, got {value!r}")


@attrs.frozen(kw_only=True)
class SessionQuery:
    """Filters, page size and offset of a sessions query; validated on construction.

    ``None`` means "no filter" (presence matters: ``tenant_id=""`` matches sessions
    without a tenant, ``decision=0`` blocked ones). ``decision`` below 0 means all, as
    in the original; ``limit`` 0 means :data:`DEFAULT_LIMIT`, and more than
    :data:`MAX_LIMIT` is capped. Raises :class:`InvalidQueryError`.
    """

    agent_id: str | None = attrs.field(default=None, validator=_optional_text)
    tenant_id: str | None = attrs.field(default=None, validator=_optional_text)
    decision: int | None = None
    decision_name: str | None = attrs.field(default=None, validator=_optional_text)
    layer: str | None = attrs.field(default=None, validator=_optional_text)
    start_time_ms: int | None = None
    end_time_ms: int | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def __attrs_post_init__(self) -> None:
        for name in ("decision", "start_time_ms", "end_time_ms", "limit", "offset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise InvalidQueryError(f"{name} must be an integer, got {value!r}")
        if self.limit < 0:
            raise InvalidQueryError(f"limit must be >= 0 (0 = {DEFAULT_LIMIT}), got {self.limit}")
        if self.offset < 0:
            raise InvalidQueryError(f"offset must be >= 0, got {self.offset}")
        if self.decision is not None and self.decision > 1:
            raise InvalidQueryError(
                f"decision must be 0 (blocked), 1 (allowed) or -1 (all), got {self.decision}"
            )
        if self.decision_name is not None and self.decision_name not in DECISION_NAMES:
            raise InvalidQueryError(
                f"decision_name must be one of {', '.join(DECISION_NAMES)}, "
                f"got {self.decision_name!r}"
            )
        start, end = self.start_time_ms, self.end_time_ms
        if start is not None and end is not None and end < start:
            raise InvalidQueryError(f"end_time_ms ({end}) is before start_time_ms ({start})")

    @property
    def page_size(self) -> int:
        return min(self.limit or DEFAULT_LIMIT, MAX_LIMIT)

    def where(self) -> tuple[str, list[object]]:
        """The SQL ``WHERE`` clause (``""`` for none) and its parameters."""
        terms: list[str] = []
        params: list[object] = []
        for column in ("agent_id", "tenant_id", "layer", "decision_name"):
            value = getattr(self, column)
            if value is not None:
                terms.append(f"{column} = ?")
                params.append(value)
        if self.decision is not None and self.decision >= 0:
            terms.append("final_decision = ?")
            params.append(self.decision)
        if self.start_time_ms is not None:
            terms.append("timestamp_ms >= ?")
            params.append(self.start_time_ms)
        if self.end_time_ms is not None:
            terms.append("timestamp_ms <= ?")
            params.append(self.end_time_ms)
        return (" WHERE " + " AND ".join(terms) if terms else ""), params


@attrs.frozen(kw_only=True)
class SessionSummary:
    """One row of a page: the original ``EnforcementSessionSummary`` fields and two more."""

    session_id: str
    agent_id: str
    tenant_id: str
    layer: str
    timestamp_ms: int
    final_decision: int
    rules_evaluated_count: int
    duration_us: int
    intent_summary: str
    decision_name: str
    deciding_rule_id: str


@attrs.frozen(kw_only=True)
class QueryPage:
    sessions: tuple[SessionSummary, ...]
    #: Sessions matching the filters, all pages together.
    total_count: int


_COLUMNS: Final = (
    "session_id, agent_id, tenant_id, layer, timestamp_ms, final_decision, rules_evaluated, "
    "duration_us, intent_summary, decision_name, deciding_rule_id"
)


class SessionReader:
    """Read-only access to the telemetry database; blocking, one call at a time.

    The connection is opened on first use and reopened when ``generation()`` (the
    writer's count of database replacements) changes. Errors become
    :class:`TelemetryUnavailableError`.
    """

    def __init__(self, path: Path, *, generation: Callable[[], int] = lambda: 0) -> None:
        self.path = path
        self._generation = generation
        self._conn: sqlite3.Connection | None = None
        self._conn_generation = -1
        self._lock = threading.Lock()
        self._deadline = 0.0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def query(self, query: SessionQuery) -> QueryPage:
        """One page of summaries, newest first, and the number of all matches."""
        where, params = query.where()
        page_sql = (
            f"SELECT {_COLUMNS} FROM sessions{where} "
            "ORDER BY timestamp_ms DESC, id DESC LIMIT ? OFFSET ?"
        )
        count_sql = (
            f"SELECT count(*) FROM sessions{where}"
            if where
            else "SELECT n FROM session_count WHERE id = 1"
        )

        def run(conn: sqlite3.Connection) -> QueryPage:
            # One read transaction: the page and the count see the same snapshot.
            conn.execute("BEGIN")
            try:
                rows = conn.execute(page_sql, [*params, query.page_size, query.offset]).fetchall()
                total = conn.execute(count_sql, params).fetchone()[0]
            finally:
                conn.execute("COMMIT")
            return QueryPage(
                sessions=tuple(
                    SessionSummary(
                        session_id=r[0],
                        agent_id=r[1],
                        tenant_id=r[2],
                        layer=r[3],
                        timestamp_ms=r[4],
                        final_decision=r[5],
                        rules_evaluated_count=r[6],
                        duration_us=r[7],
                        intent_summary=r[8],
                        decision_name=r[9],
                        deciding_rule_id=r[10],
                    )
                    for r in rows
                ),
                total_count=total,
            )

        return self._run(run)

    def get(self, session_id: str) -> str | None:
        """The session JSON of ``session_id``, or None when there is none."""

        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT session_json FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            return None if row is None else expand_stored_json(str(row[0]))

        return self._run(run)

    def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                conn = self._connection()
                self._deadline = time.monotonic() + QUERY_TIME_LIMIT_S
                return work(conn)
            except sqlite3.Error as exc:
                if self._conn is not None and (
                    is_corruption(exc) or isinstance(exc, sqlite3.OperationalError)
                ):
                    # Reopen next time: the file may have been replaced or repaired.
                    self._conn.close()
                    self._conn = None
                if "interrupted" in str(exc):
                    raise TelemetryUnavailableError(
                        f"telemetry query took longer than {QUERY_TIME_LIMIT_S:g}s and was "
                        "stopped; narrow the filters"
                    ) from None
                raise TelemetryUnavailableError(
                    f"cannot read telemetry database {str(self.path)!r}: {exc}"
                ) from None

    def _connection(self) -> sqlite3.Connection:
        generation = self._generation()
        if self._conn is not None and generation == self._conn_generation:
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if not self.path.exists():
            raise sqlite3.OperationalError("the database file does not exist (yet)")
        conn = connect(self.path, readonly=True)
        # Checked every 10,000 virtual machine steps: a cheap clock look.
        conn.set_progress_handler(self._over_time, 10_000)
        self._conn = conn
        self._conn_generation = generation
        return conn

    def _over_time(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0
