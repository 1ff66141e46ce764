"""Fleet mode: several replicas serve one rule set, replicated through PostgreSQL.

The database holds the source of truth (a rules table with a global version per
change, tombstones for removals); each replica writes there and applies what it pulls
to its own warm storage, which keeps serving reads and Enforce while the database is
away. See the README, "Running a fleet".
"""

from ._engine import Engine, open_engine
from ._errors import (
    EngineUnavailableError,
    NotAppliedError,
    PasswordFileError,
    ReplicationError,
    UnsupportedRecordError,
)
from ._reconcile import ReconcilingRefresher
from ._record import RECORD_FORMAT, encode_rules
from ._replica import Replica
from ._schema import CHANNEL, RULES_MIGRATIONS, Migration, apply_migrations
from ._settings import EngineSettings, read_password_file
from ._status import ReplicationStatus
from ._tombstones import collection_interval, serve_tombstone_collection
from ._writer import FleetWriter

__all__ = [
    "CHANNEL",
    "RECORD_FORMAT",
    "RULES_MIGRATIONS",
    "Engine",
    "EngineSettings",
    "EngineUnavailableError",
    "FleetWriter",
    "Migration",
    "NotAppliedError",
    "PasswordFileError",
    "ReconcilingRefresher",
    "Replica",
    "ReplicationError",
    "ReplicationStatus",
    "UnsupportedRecordError",
    "apply_migrations",
    "collection_interval",
    "encode_rules",
    "open_engine",
    "read_password_file",
    "serve_tombstone_collection",
]
