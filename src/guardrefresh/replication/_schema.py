"""The fleet database's schema, created and migrated at start by versioned migrations.

Each component of the service that keeps tables in the fleet database (the rules here;
others may add theirs) lists its :class:`Migration` steps; :func:`apply_migrations`
applies the ones a database lacks, in order, in one transaction (a failing step leaves
the database as it was), and records them in ``guardrefresh_migrations``. Replicas starting together are safe: the whole
run holds a transaction-level advisory lock, so one applies and the others then find
the steps done. A database that has steps this build does not know (a newer replica
migrated it) is used as it is when the steps this build needs are all there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg
import attrs

__all__ = [
    "CHANNEL",
    "GC_LOCK",
    "META_TABLE",
    "MIGRATIONS_TABLE",
    "RULES_MIGRATIONS",
    "RULES_TABLE",
    "VERSION_SEQUENCE",
    "WRITE_LOCK",
    "Migration",
    "apply_migrations",
]

logger = logging.getLogger(__name__)

RULES_TABLE = "guardrefresh_rules"
META_TABLE = "guardrefresh_meta"
VERSION_SEQUENCE = "guardrefresh_rule_version"
MIGRATIONS_TABLE = "guardrefresh_migrations"
#: NOTIFY channel: the payload is the last version a write committed (never rows:
#: payloads stop at 8,000 bytes).
CHANNEL = "guardrefresh"

# Advisory lock keys (64-bit; arbitrary constants, unlikely to collide with other users
# of the same database). Writers take WRITE_LOCK for their whole transaction: a
# sequence's order is not commit order, and without it a replica pulling
# "version > mine" can pass over a row committed late, for good.
WRITE_LOCK = 0x6775_6172_6401  # "guard" + 1
GC_LOCK = 0x6775_6172_6402
MIGRATION_LOCK = 0x6775_6172_6403


@attrs.frozen
class Migration:
    """One step of a component's schema: ``version`` counts from 1 within ``component``."""

    component: str
    version: int
    description: str
    statements: tuple[str, ...]


RULES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "rules",
        1,
        "rules table, version sequence, meta (tombstone horizon)",
        (
            f"CREATE SEQUENCE {VERSION_SEQUENCE} AS bigint MINVALUE 1",
            f"""CREATE TABLE {RULES_TABLE} (
                rule_id text PRIMARY KEY,
                agent_id text NOT NULL,
                installed_by text NOT NULL,
                family_id text NOT NULL,
                layer text NOT NULL,
                -- From the sequence, per row; a change moves the row to a new version.
                version bigint NOT NULL,
                -- The last version of the write this row came from: replicas apply a
                -- write's rows together.
                batch_end bigint NOT NULL,
                tombstone boolean NOT NULL DEFAULT false,
                -- Layout of `encoded` (see guardrefresh.replication._record).
                format smallint NOT NULL,
                -- The rule's 64-bit content digest (signed), 0 for a tombstone.
                digest bigint NOT NULL,
                encoded bytea,
                updated_at timestamptz NOT NULL DEFAULT now()
            )""",
            # Anchors are float32 noise to a compressor: store them out of line as is.
            f"ALTER TABLE {RULES_TABLE} ALTER COLUMN encoded SET STORAGE EXTERNAL",
            f"CREATE UNIQUE INDEX {RULES_TABLE}_version ON {RULES_TABLE} (version)",
            f"CREATE INDEX {RULES_TABLE}_agent ON {RULES_TABLE} (agent_id) WHERE NOT tombstone",
            f"CREATE INDEX {RULES_TABLE}_installer ON {RULES_TABLE} (installed_by) "
            "WHERE NOT tombstone",
            f"CREATE INDEX {RULES_TABLE}_tombstones ON {RULES_TABLE} (updated_at) WHERE tombstone",
            f"CREATE TABLE {META_TABLE} (key text PRIMARY KEY, value bigint NOT NULL)",
            # Tombstones up to this version may be gone: a replica below it resyncs.
            f"INSERT INTO {META_TABLE} (key, value) VALUES ('horizon', 0)",
        ),
    ),
)


async def apply_migrations(
    connection: asyncpg.Connection, migrations: Sequence[Migration]
) -> list[Migration]:
    """Apply the steps of ``migrations`` the database lacks (asyncio side); returns them.

    Steps of one component must be numbered 1, 2, ... in order. Raises
    ``asyncpg.PostgresError`` when a step fails; nothing of the run is then applied.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                component text NOT NULL,
                version integer NOT NULL,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (component, version)
            )"""
        )
        rows = await connection.fetch(f"SELECT component, version FROM {MIGRATIONS_TABLE}")
        done = {(row["component"], row["version"]) for row in rows}
        applied = []
        for step in migrations:
            if (step.component, step.version) in done:
                continue
            for statement in step.statements:
                await connection.execute(statement)
            await connection.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (component, version, description) "
                "VALUES ($1, $2, $3)",
                step.component,
                step.version,
                step.description,
            )
            applied.append(step)
    for step in applied:
        logger.info(
            "Fleet database migrated: %s version %d (%s)",
            step.component,
            step.version,
            step.description,
        )
    return applied
