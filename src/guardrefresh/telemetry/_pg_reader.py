"""Reading the fleet's sessions back from PostgreSQL: pages of summaries and one session.

The same filters, order (newest first, ties by insertion) and ``total_count`` as the
SQLite :class:`~._query.SessionReader`: the ``WHERE`` clause comes from
:meth:`~._query.SessionQuery.where`, with numbered parameters. A page and its count
are read in one read-only snapshot; a query running longer than
:data:`~._query.QUERY_TIME_LIMIT_S` is stopped by the server. Every failure becomes
:class:`~._query.TelemetryUnavailableError`.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Final

import asyncpg
import trio

from ._query import (
    QUERY_TIME_LIMIT_S,
    QueryPage,
    SessionQuery,
    SessionSummary,
    TelemetryUnavailableError,
)
from ._session import expand_stored_json
from ._store import EngineLike

__all__ = ["PostgresSessionReader"]

_COLUMNS: Final = (
    "session_id, agent_id, tenant_id, layer, timestamp_ms, final_decision, rules_evaluated, "
    "duration_us, intent_summary, decision_name, deciding_rule_id"
)
_COUNT_ALL: Final = "SELECT coalesce(sum(n), 0)::bigint FROM telemetry_session_count"
_PLACEHOLDER = re.compile(r"\?")
#: Concurrent reads (each holds a pooled connection while it runs).
MAX_CONCURRENT_READS: Final = 2

Row = tuple[Any, ...]


def _numbered(where: str) -> str:
    """SQLite's ``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (our own clause only)."""
    counter = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", where)


async def _read_page(
    conn: Any,
    page_sql: str,
    count_sql: str,
    params: list[object],
    size: int,
    offset: int,
) -> tuple[list[Row], int]:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {int(QUERY_TIME_LIMIT_S * 1000)}")
        rows = await conn.fetch(page_sql, *params, size, offset)
        total = await conn.fetchval(count_sql, *params)
    return [tuple(r) for r in rows], int(total)


async def _read_one(conn: Any, session_id: str) -> str | None:
    value = await conn.fetchval(
        "SELECT session_json FROM telemetry_sessions WHERE session_id = $1", session_id
    )
    return None if value is None else str(value)


class PostgresSessionReader:
    """Reads through the fleet engine; at most :data:`MAX_CONCURRENT_READS` at a time."""

    def __init__(self, engine: EngineLike) -> None:
        self._engine = engine
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_READS)

    async def query(self, query: SessionQuery) -> QueryPage:
        """One page of summaries, newest first, and the number of all matches."""
        where, params = query.where()
        where = _numbered(where)
        n = len(params)
        page_sql = (
            f"SELECT {_COLUMNS} FROM telemetry_sessions{where} "
            f"ORDER BY timestamp_ms DESC, id DESC LIMIT ${n + 1} OFFSET ${n + 2}"
        )
        count_sql = f"SELECT count(*) FROM telemetry_sessions{where}" if where else _COUNT_ALL
        async with self._limiter:
            rows, total = await self._call(
                _read_page, page_sql, count_sql, params, query.page_size, query.offset
            )
        return QueryPage(
            sessions=tuple(
                SessionSummary(
                    session_id=r[0],
                    agent_id=r[1],
                    tenant_id=r[2],
                    layer=r[3],
                    timestamp_ms=int(r[4]),
                    final_decision=int(r[5]),
                    rules_evaluated_count=int(r[6]),
                    duration_us=int(r[7]),
                    intent_summary=r[8],
                    decision_name=r[9],
                    deciding_rule_id=r[10],
                )
                for r in rows
            ),
            total_count=total,
        )

    async def get(self, session_id: str) -> str | None:
        """The session JSON of ``session_id``, or None when there is none."""
        async with self._limiter:
            stored: str | None = await self._call(_read_one, session_id)
        if stored is None:
            return None
        # Rows stored compactly expand to the full document, as the SQLite reader serves
        # it; a 100-rule session is tens of KB of JSON: not on the event loop.
        document: str = await trio.to_thread.run_sync(expand_stored_json, stored)
        return document

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await self._engine.run(fn, *args)
        except Exception as exc:
            cause = exc if isinstance(exc, asyncpg.PostgresError) else exc.__cause__
            if isinstance(cause, asyncpg.QueryCanceledError):
                raise TelemetryUnavailableError(
                    f"telemetry query took longer than {QUERY_TIME_LIMIT_S:g}s and was "
                    "stopped; narrow the filters"
                ) from None
            text = str(exc).strip() or type(exc).__name__
            raise TelemetryUnavailableError(
                f"cannot read the fleet's telemetry in PostgreSQL: {text}"
            ) from None
