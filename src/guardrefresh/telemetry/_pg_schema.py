"""The telemetry tables in PostgreSQL (fleet mode): schema, versioned migrations, SQL.

The tables live in the fleet's database beside the replicated rules, all named
``telemetry_*``. ``telemetry_sessions`` mirrors the SQLite table (one indexed column per
filter, the summary columns, the session JSON); ``telemetry_session_count`` keeps the
row count so an unfiltered page does not count millions of rows. The count is sharded
by server process (16 rows, summed when read): replicas committing batches at the same
time do not queue on one counter row. Statement-level triggers keep it exact, once per
batch rather than once per row.

Migrations are numbered; ``telemetry_schema`` records the version. Every replica
migrates at start under an advisory lock, so replicas starting together apply each
step once; a database migrated by a newer guardrefresh is refused, never downgraded.

The ``async def`` functions here are asyncio code (asyncpg): they run on a pooled
connection through the engine's ``run`` (see :mod:`._pg_service`).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "MIGRATE_LOCK_KEY",
    "MIGRATIONS",
    "PG_SCHEMA_VERSION",
    "PRUNE_LOCK_KEY",
    "TelemetrySchemaError",
    "migrate",
]

#: ``pg_advisory_xact_lock`` keys (bigint): "gtel" + "mig1" / "pru1". The replication
#: core uses keys of its own.
MIGRATE_LOCK_KEY: Final = 0x6774656C_6D696731
PRUNE_LOCK_KEY: Final = 0x6774656C_70727531

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

#: Migration ``i`` (1-based) brings the schema from version ``i - 1`` to ``i``.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1,)
PG_SCHEMA_VERSION: Final = len(MIGRATIONS)


class TelemetrySchemaError(Exception):
    """The database's telemetry schema cannot be used (written by a newer version)."""


async def migrate(conn: Any) -> int:
    """Bring the telemetry schema to :data:`PG_SCHEMA_VERSION` (asyncio code); the version.

    One transaction under :data:`MIGRATE_LOCK_KEY`: it applies every missing step or
    none. Raises :class:`TelemetrySchemaError` for a schema newer than this code.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS telemetry_schema ("
            "id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
        )
        version = await conn.fetchval("SELECT version FROM telemetry_schema WHERE id = 1")
        version = 0 if version is None else int(version)
        if version > PG_SCHEMA_VERSION:
            raise TelemetrySchemaError(
                f"the telemetry tables were written by a newer guardrefresh (schema version "
                f"{version}, this one knows {PG_SCHEMA_VERSION}); upgrade this replica"
            )
        for step in MIGRATIONS[version:]:
            for statement in step:
                await conn.execute(statement)
        if version < PG_SCHEMA_VERSION:
            await conn.execute(
                "INSERT INTO telemetry_schema (id, version) VALUES (1, $1) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                PG_SCHEMA_VERSION,
            )
        return PG_SCHEMA_VERSION
