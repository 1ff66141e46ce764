"""What the service sees of a telemetry store, whichever database is behind it.

:class:`TelemetryStore` is the interface Enforce (``record``), the gRPC reads
(``query``, ``get``) and the metrics (``stats``) use: the SQLite store of a single node
(:class:`~._service.Telemetry`) and the PostgreSQL store of a fleet
(:class:`~._pg_service.PostgresTelemetry`) both provide it, with the same
:class:`TelemetryStats`. :class:`EngineLike` is
what the PostgreSQL store needs of the fleet's database engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

import attrs

from ._query import QueryPage, SessionQuery
from ._recorder import TelemetryRecorder
from ._session import EnforcementSession
from ._writer_counters import COMMIT_BUCKETS, WriterCounters

__all__ = ["DEFAULT_BATCH_SIZE", "EngineLike", "TelemetryStats", "TelemetryStore"]

_T = TypeVar("_T")

#: Sessions per transaction at most (a full batch is written without waiting out the window).
DEFAULT_BATCH_SIZE: Final = 2000


@attrs.frozen(kw_only=True)
class TelemetryStats:
    """A snapshot of the telemetry counters (for metrics)."""

    #: Sessions committed to the database since start.
    recorded: int
    #: Sessions lost: queue full, recorder closed, or a failed write.
    dropped: int
    #: Sessions waiting for the writer now.
    queue_depth: int
    #: Sessions deleted by retention (age or count) since start.
    pruned: int
    #: Bytes of the database file and its WAL.
    database_bytes: int
    #: Batch commits per bucket of :data:`COMMIT_BUCKETS` (the last: larger), not cumulative.
    commit_counts: tuple[int, ...]
    commit_seconds: float
    #: False while writes fail or the database cannot be opened.
    healthy: bool

    buckets = COMMIT_BUCKETS

    @classmethod
    def of(cls, recorder: TelemetryRecorder, counters: WriterCounters) -> TelemetryStats:
        """The snapshot of a recorder and its writer's counters (either backend)."""
        return cls(
            recorded=counters.committed,
            dropped=recorder.dropped + counters.dropped,
            queue_depth=recorder.depth,
            pruned=counters.pruned,
            database_bytes=counters.database_bytes,
            commit_counts=tuple(counters.commit_counts),
            commit_seconds=counters.commit_seconds,
            healthy=counters.healthy,
        )


class TelemetryStore(Protocol):
    """Record sessions (never blocks) and read them back."""

    def record(self, session: EnforcementSession) -> bool:
        """Queue ``session`` for writing; O(1), never blocks. False if it was dropped."""
        ...

    async def query(self, query: SessionQuery) -> QueryPage:
        """A page of summaries, newest first, with the number of all matches.

        Raises :class:`~._query.TelemetryUnavailableError` when the store cannot be read.
        """
        ...

    async def get(self, session_id: str) -> str | None:
        """The session JSON, or None for an unknown id."""
        ...

    def stats(self) -> TelemetryStats:
        """A snapshot of the counters (for metrics)."""
        ...

    @property
    def location(self) -> str:
        """Where the sessions are kept, for log lines (never a password)."""
        ...


class EngineLike(Protocol):
    """A PostgreSQL connection pool reached from Trio (the fleet's replication engine).

    ``await engine.run(fn, *args)`` runs the asyncio coroutine function
    ``fn(connection, *args)`` on a pooled asyncpg connection and returns its result;
    it raises when the database cannot be reached or ``fn`` fails.
    """

    async def run(self, fn: Callable[..., Awaitable[_T]], /, *args: Any) -> _T: ...
