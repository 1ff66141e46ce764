"""Enforcement telemetry: every Enforce call recorded as a session, read back.

:func:`open_telemetry` runs the store for a block: SQLite on a single node (writer
thread, read connection), or the fleet's PostgreSQL when given the fleet's engine (every
replica writes into one table, any replica reads the whole fleet's). Both are a
:class:`TelemetryStore`. :class:`EnforcementSession` is one record;
:class:`SessionQuery` filters pages.
"""

from ._checkpoint import CHECKPOINT_WAL_BYTES, Checkpointer
from ._database import SCHEMA_VERSION, TelemetryDatabaseError, open_database
from ._intent import INTENT_JSON_LIMIT, cap_intent_json, intent_identity, intent_summary
from ._observer import (
    EnforceOutcomeLike,
    EnforceRecorder,
    IntentLike,
    SessionSink,
    session_from_outcome,
)
from ._pg_schema import PG_SCHEMA_VERSION
from ._pg_service import PostgresTelemetry, open_postgres_telemetry
from ._pg_writer import PostgresSessionWriter
from ._query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidQueryError,
    QueryPage,
    SessionQuery,
    SessionReader,
    SessionSummary,
    TelemetryUnavailableError,
)
from ._recorder import DEFAULT_QUEUE_CAPACITY, TelemetryRecorder
from ._service import Telemetry, open_telemetry
from ._session import (
    BLOCK,
    DECISION_NAMES,
    PASS,
    STORED_RULE_FIELDS,
    Durations,
    EnforcementResultLike,
    EnforcementSession,
    EvidenceLike,
    RuleEvaluation,
    decision_name_of,
    expand_stored_json,
    legacy_decision,
    rule_document,
)
from ._store import DEFAULT_BATCH_SIZE, EngineLike, TelemetryStats, TelemetryStore
from ._writer import COMMIT_BUCKETS, PRUNE_STEP_BUDGET_S, WRITER_NICE, SessionWriter, session_row

__all__ = [
    "BLOCK",
    "CHECKPOINT_WAL_BYTES",
    "COMMIT_BUCKETS",
    "DECISION_NAMES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LIMIT",
    "DEFAULT_QUEUE_CAPACITY",
    "INTENT_JSON_LIMIT",
    "MAX_LIMIT",
    "PASS",
    "PG_SCHEMA_VERSION",
    "PRUNE_STEP_BUDGET_S",
    "SCHEMA_VERSION",
    "STORED_RULE_FIELDS",
    "WRITER_NICE",
    "Checkpointer",
    "Durations",
    "EnforceOutcomeLike",
    "EnforceRecorder",
    "EnforcementResultLike",
    "EnforcementSession",
    "EngineLike",
    "EvidenceLike",
    "IntentLike",
    "InvalidQueryError",
    "PostgresSessionWriter",
    "PostgresTelemetry",
    "QueryPage",
    "RuleEvaluation",
    "SessionQuery",
    "SessionReader",
    "SessionSink",
    "SessionSummary",
    "SessionWriter",
    "Telemetry",
    "TelemetryDatabaseError",
    "TelemetryRecorder",
    "TelemetryStats",
    "TelemetryStore",
    "TelemetryUnavailableError",
    "cap_intent_json",
    "decision_name_of",
    "expand_stored_json",
    "intent_identity",
    "intent_summary",
    "legacy_decision",
    "open_database",
    "open_postgres_telemetry",
    "open_telemetry",
    "rule_document",
    "session_from_outcome",
    "session_row",
]
