"""The telemetry tables in PostgreSQL (fleet mode): schema, versioned migrations, SQL.

The tables live in the fleet's database beside the replicated rules, all named
``telemetry_*``. ``telemetry_sessions`` mirrors the SQLite table (one indexed column per
filter, the summary columns, the session JSON); ``telemetry_session_count`` keeps the
row count so an unfiltered page does not count millions of rows. The count is sharded
by server process (16 rows, summed when read): replicas committing batches at the same
time do not queue on one counter row. Statement-level triggers keep it exact, once per
batch rather than once per row.

The schema is the fleet's component ``"telemetry"``: its numbered
:class:`~guardrefresh.replication.Migration` steps are applied by
:func:`~guardrefresh.replication.apply_migrations` (recorded in
``guardrefresh_migrations``, under an advisory lock, so replicas starting together
apply each step once), the same mechanism as the replicated rules'.

The ``async def`` functions here are asyncio code (asyncpg): they run on a pooled
connection through the engine's ``run`` (see :mod:`._pg_service`).
"""

from __future__ import annotations

from typing import Any, Final

from ..replication import Migration, apply_migrations

__all__ = [
    "COMPONENT",
    "MIGRATIONS",
    "PG_SCHEMA_VERSION",
    "PRUNE_LOCK_KEY",
    "migrate",
]

#: The ``pg_advisory_xact_lock`` key (bigint, "gtel" + "pru1") of pruning; the replication
#: core uses keys of its own.
PRUNE_LOCK_KEY: Final = 0x6774656C_70727531
COMPONENT: Final = "telemetry"

_V1: Final = (
    """
    CREATE TABLE telemetry_sessions (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        session_id text NOT NULL UNIQUE,
        timestamp_ms bigint NOT NULL,
        tenant_id text NOT NULL,
        agent_id text NOT NULL,
        layer text NOT NULL,
        final_decision smallint NOT NULL,
        decision_name text NOT NULL,
        rules_evaluated integer NOT NULL,
        duration_us bigint NOT NULL,
        intent_summary text NOT NULL,
        deciding_rule_id text NOT NULL,
        session_json text NOT NULL
    )
    """,
    # Every filter has an index that also orders by time, newest first (and by id for
    # ties): a page never sorts the matches of a filter.
    "CREATE INDEX telemetry_sessions_by_time ON telemetry_sessions (timestamp_ms, id)",
    "CREATE INDEX telemetry_sessions_by_tenant ON telemetry_sessions (tenant_id, timestamp_ms, id)",
    "CREATE INDEX telemetry_sessions_by_agent ON telemetry_sessions (agent_id, timestamp_ms, id)",
    "CREATE INDEX telemetry_sessions_by_layer ON telemetry_sessions (layer, timestamp_ms, id)",
    "CREATE INDEX telemetry_sessions_by_decision "
    "ON telemetry_sessions (final_decision, timestamp_ms, id)",
    "CREATE INDEX telemetry_sessions_by_decision_name "
    "ON telemetry_sessions (decision_name, timestamp_ms, id)",
    "CREATE INDEX telemetry_sessions_by_tenant_decision "
    "ON telemetry_sessions (tenant_id, decision_name, timestamp_ms, id)",
    "CREATE TABLE telemetry_session_count (shard integer PRIMARY KEY, n bigint NOT NULL)",
    """
    CREATE FUNCTION telemetry_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO telemetry_session_count AS c (shard, n)
        SELECT pg_backend_pid() % 16, count(*) FROM inserted_rows
        ON CONFLICT (shard) DO UPDATE SET n = c.n + excluded.n;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION telemetry_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO telemetry_session_count AS c (shard, n)
        SELECT pg_backend_pid() % 16, -count(*) FROM deleted_rows
        ON CONFLICT (shard) DO UPDATE SET n = c.n + excluded.n;
        RETURN NULL;
    END $$
    """,
    # Only the rows an upsert really inserted are in its insert transition table.
    "CREATE TRIGGER telemetry_sessions_counted_in AFTER INSERT ON telemetry_sessions "
    "REFERENCING NEW TABLE AS inserted_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION telemetry_count_inserted()",
    "CREATE TRIGGER telemetry_sessions_counted_out AFTER DELETE ON telemetry_sessions "
    "REFERENCING OLD TABLE AS deleted_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION telemetry_count_deleted()",
)

MIGRATIONS: Final = (
    Migration(COMPONENT, 1, "sessions table, one index per filter, sharded row count", _V1),
)
PG_SCHEMA_VERSION: Final = len(MIGRATIONS)


async def migrate(conn: Any) -> int:
    """Apply the telemetry steps the database lacks (asyncio code); the schema version.

    One transaction: every missing step or none. Raises ``asyncpg.PostgresError`` when
    a step fails.
    """
    await apply_migrations(conn, MIGRATIONS)
    return PG_SCHEMA_VERSION
