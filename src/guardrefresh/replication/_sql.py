"""The fleet database's statements, as asyncio-side functions for :meth:`Engine.run`.

Every function here takes an asyncpg connection first and runs on the asyncio side of
the loop; none of them may call Trio. Writes serialise on an advisory lock taken first
in their transaction (see ``_schema.WRITE_LOCK``); reads that must agree with each
other (the horizon, the head and the rows) share one REPEATABLE READ snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import attrs

from ..bridge import RuleConflictError, RuleNotFoundError
from ..model import clip, echo
from ._record import RECORD_FORMAT, EncodedRule, PageDecoder, unsigned64
from ._schema import CHANNEL, GC_LOCK, META_TABLE, RULES_TABLE, VERSION_SEQUENCE, WRITE_LOCK

__all__ = [
    "FleetDigest",
    "Pull",
    "Snapshot",
    "collect_tombstones",
    "fleet_digest",
    "pull_changes",
    "read_snapshot",
    "write_install",
    "write_remove_agent",
    "write_remove_policy",
]

#: Rows read per round trip while resynchronising (~8 MB of rules).
SNAPSHOT_PAGE = 1000

_ROW_COLUMNS = "rule_id, agent_id, installed_by, family_id, layer, format, encoded"


@attrs.frozen
class WriteOutcome:
    """A committed write: its versions ran up to ``end``; ``ids`` are the rules it touched."""

    end: int
    ids: tuple[str, ...]


# -- writes --------------------------------------------------------------------------


async def _begin_write(connection: asyncpg.Connection, count: int, *, serialise: bool) -> int:
    """Take the writers' lock and reserve ``count`` versions; returns the first."""
    # One round trip: the lock (in FROM, so taken before the target list runs), then
    # the range. setval after nextval is safe: every caller of nextval holds the lock.
    lock = "pg_advisory_xact_lock($2)" if serialise else "(SELECT $2::bigint)"
    last: int = await connection.fetchval(
        f"SELECT setval('{VERSION_SEQUENCE}', nextval('{VERSION_SEQUENCE}') + $1 - 1) "
        f"FROM {lock} AS held",
        count,
        WRITE_LOCK,
    )
    return last - count + 1


async def _notify(connection: asyncpg.Connection, end: int) -> None:
    await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, str(end))


async def write_install(
    connection: asyncpg.Connection,
    agent_id: str,
    rules: Sequence[EncodedRule],
    *,
    serialise: bool = True,
) -> WriteOutcome:
    """Upsert ``rules`` for ``agent_id`` in one transaction, or nothing.

    Raises :class:`RuleConflictError` (the first rule of the request, in request
    order, that exists and belongs to neither ``agent_id`` as its agent nor as its
    installer), as a single node does. ``serialise=False`` leaves out the writers'
    lock: never in the service; the tests use it to show what the lock prevents.
    """
    ids = [r.rule_id for r in rules]
    async with connection.transaction():
        first = await _begin_write(connection, len(rules), serialise=serialise)
        owners = await connection.fetch(
            f"SELECT rule_id FROM {RULES_TABLE} WHERE rule_id = ANY($1::text[]) "
            "AND NOT tombstone AND agent_id <> $2 AND installed_by <> $2",
            ids,
            agent_id,
        )
        if owners:
            taken = {row["rule_id"] for row in owners}
            rule_id = next(i for i in ids if i in taken)
            raise RuleConflictError(
                f"rule {echo(rule_id)} belongs to another agent; remove it there first"
            )
        end = first + len(rules) - 1
        await connection.execute(
            f"""INSERT INTO {RULES_TABLE} AS r (rule_id, agent_id, installed_by, family_id,
                    layer, version, batch_end, tombstone, format, digest, encoded, updated_at)
                SELECT u.rule_id, u.agent_id, u.installed_by, u.family_id, u.layer, u.version,
                       $9, false, $10, u.digest, u.encoded, now()
                FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                            $6::int8[], $7::int8[], $8::bytea[])
                     AS u(rule_id, agent_id, installed_by, family_id, layer, version, digest,
                          encoded)
                ON CONFLICT (rule_id) DO UPDATE SET
                    agent_id = excluded.agent_id, installed_by = excluded.installed_by,
                    family_id = excluded.family_id, layer = excluded.layer,
                    version = excluded.version, batch_end = excluded.batch_end,
                    tombstone = false, format = excluded.format, digest = excluded.digest,
                    encoded = excluded.encoded, updated_at = excluded.updated_at""",
            ids,
            [r.agent_id for r in rules],
            [r.installed_by for r in rules],
            [r.family_id for r in rules],
            [r.layer for r in rules],
            list(range(first, end + 1)),
            [r.digest for r in rules],
            [r.encoded for r in rules],
            end,
            RECORD_FORMAT,
        )
        await _notify(connection, end)
    return WriteOutcome(end, tuple(ids))


async def _tombstone(connection: asyncpg.Connection, ids: Sequence[str]) -> int:
    # The callers hold the writers' lock already.
    first = await _begin_write(connection, len(ids), serialise=False)
    end = first + len(ids) - 1
    await connection.execute(
        f"""UPDATE {RULES_TABLE} AS r SET tombstone = true, encoded = NULL, digest = 0,
                version = d.version, batch_end = $3, updated_at = now()
            FROM unnest($1::text[], $2::int8[]) AS d(rule_id, version)
            WHERE r.rule_id = d.rule_id""",
        list(ids),
        list(range(first, end + 1)),
        end,
    )
    await _notify(connection, end)
    return end


async def write_remove_policy(
    connection: asyncpg.Connection, agent_id: str, policy_id: str
) -> WriteOutcome:
    """Tombstone rule ``policy_id`` of ``agent_id``.

    Raises :class:`RuleNotFoundError` and :class:`RuleConflictError` worded as a single
    node words them; nothing changes then.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
        row = await connection.fetchrow(
            f"SELECT agent_id, installed_by FROM {RULES_TABLE} "
            "WHERE rule_id = $1 AND NOT tombstone",
            policy_id,
        )
        if row is None:
            raise RuleNotFoundError(f"Policy not found: {clip(policy_id)}")
        if agent_id not in (row["agent_id"], row["installed_by"]):
            raise RuleConflictError(
                f"Policy {clip(policy_id)} does not belong to agent {clip(agent_id)}"
            )
        end = await _tombstone(connection, [policy_id])
    return WriteOutcome(end, (policy_id,))


async def write_remove_agent(connection: asyncpg.Connection, agent_id: str) -> WriteOutcome | None:
    """Tombstone every rule scoped to or installed by ``agent_id``; None when there is none."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
        rows = await connection.fetch(
            f"SELECT rule_id FROM {RULES_TABLE} WHERE NOT tombstone "
            "AND (agent_id = $1 OR installed_by = $1) ORDER BY rule_id",
            agent_id,
        )
        if not rows:
            return None
        ids = [row["rule_id"] for row in rows]
        end = await _tombstone(connection, ids)
    return WriteOutcome(end, tuple(ids))


# -- reads ---------------------------------------------------------------------------


@attrs.frozen
class Head:
    """Where the fleet is: the newest version it holds and its tombstone horizon."""

    version: int
    horizon: int


async def _head(connection: asyncpg.Connection) -> Head:
    row = await connection.fetchrow(
        f"SELECT (SELECT value FROM {META_TABLE} WHERE key = 'horizon') AS horizon, "
        f"(SELECT coalesce(max(version), 0) FROM {RULES_TABLE}) AS newest"
    )
    horizon, newest = int(row["horizon"]), int(row["newest"])
    return Head(max(newest, horizon), horizon)


@attrs.frozen
class Pull:
    """What a replica at some version needs: rows to apply, or a resync."""

    head: Head
    #: The local version is below the horizon or above the head: only a whole copy helps.
    resync: bool
    #: Upserted rules (rows of ``_ROW_COLUMNS``) and removed ids, in version order.
    upserts: list[asyncpg.Record]
    deletes: list[str]
    #: The version the pulled rows bring the replica to (its own when none).
    version: int
    #: Seconds since the epoch at which the oldest pulled change was made.
    oldest_change_at: float | None
    #: True when rows beyond this page remain.
    more: bool


async def pull_changes(connection: asyncpg.Connection, after: int, limit: int) -> Pull:
    """Changes with a version above ``after``: about ``limit`` rows, whole writes.

    A page never ends inside a write (rows of one write share ``batch_end``), so a
    replica applies each write at once.
    """
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        head = await _head(connection)
        if after < head.horizon or after > head.version:
            return Pull(head, True, [], [], after, None, False)
        rows = await connection.fetch(
            f"SELECT version, batch_end, tombstone, extract(epoch from updated_at) AS at, "
            f"{_ROW_COLUMNS} FROM {RULES_TABLE} WHERE version > $1 ORDER BY version LIMIT $2",
            after,
            limit,
        )
        if rows and rows[-1]["batch_end"] > rows[-1]["version"]:
            rows += await connection.fetch(
                f"SELECT version, batch_end, tombstone, extract(epoch from updated_at) AS at, "
                f"{_ROW_COLUMNS} FROM {RULES_TABLE} WHERE version > $1 AND version <= $2 "
                "ORDER BY version",
                rows[-1]["version"],
                rows[-1]["batch_end"],
            )
    if not rows:
        return Pull(head, False, [], [], after, None, False)
    version = int(rows[-1]["version"])
    return Pull(
        head,
        False,
        [row for row in rows if not row["tombstone"]],
        [row["rule_id"] for row in rows if row["tombstone"]],
        version,
        float(min(row["at"] for row in rows)),
        version < head.version,
    )


@attrs.frozen
class FleetDigest:
    """The fleet's rule set in brief: version, live rules, and the sum of their digests."""

    head: Head
    count: int
    digest: int


async def fleet_digest(connection: asyncpg.Connection) -> FleetDigest:
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        head = await _head(connection)
        row = await connection.fetchrow(
            f"SELECT count(*) AS n, coalesce(sum(digest), 0) AS total FROM {RULES_TABLE} "
            "WHERE NOT tombstone"
        )
    return FleetDigest(head, int(row["n"]), unsigned64(int(row["total"])))


@attrs.frozen
class Snapshot:
    """Every live rule of the fleet at one version, ready to replace a store."""

    digest: FleetDigest
    rules: PageDecoder


async def read_snapshot(connection: asyncpg.Connection) -> Snapshot:
    """Read the whole rule set in one snapshot, page by page, into columns."""
    decoder = PageDecoder()
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        head = await _head(connection)
        cursor = await connection.cursor(
            f"SELECT {_ROW_COLUMNS} FROM {RULES_TABLE} WHERE NOT tombstone ORDER BY rule_id"
        )
        while rows := await cursor.fetch(SNAPSHOT_PAGE):
            decoder.add(rows)
    return Snapshot(FleetDigest(head, len(decoder), decoder.digest()), decoder)


async def collect_tombstones(
    connection: asyncpg.Connection, retention_s: float
) -> tuple[int, int] | None:
    """Delete tombstones older than ``retention_s`` and raise the horizon over them.

    Returns (tombstones deleted, horizon), or None when another replica is collecting
    (one at a time: a transaction-level advisory lock, tried, never waited for).
    """
    async with connection.transaction():
        if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", GC_LOCK):
            return None
        row = await connection.fetchrow(
            f"""WITH gone AS (
                    DELETE FROM {RULES_TABLE}
                    WHERE tombstone AND updated_at < now() - make_interval(secs => $1)
                    RETURNING version)
                SELECT count(*) AS n, coalesce(max(version), 0) AS top FROM gone""",
            float(retention_s),
        )
        horizon: int = await connection.fetchval(
            f"UPDATE {META_TABLE} SET value = greatest(value, $1) WHERE key = 'horizon' "
            "RETURNING value",
            int(row["top"]),
        )
    return int(row["n"]), horizon
