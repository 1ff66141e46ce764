"""The sections of the configuration besides ``[server]`` and ``[scheduler]``.

Each field is the declaration of one setting (see :mod:`guardrefresh.settings`); the
``[scheduler]`` section is :class:`~guardrefresh.refresh.SchedulerConfig`, declared
where the scheduler lives.
"""

from __future__ import annotations

import pathlib

import attrs

from ..bridge import DEFAULT_HOT_CAPACITY
from ..refresh import staleness_limit
from ..settings import (
    BOOLEAN,
    HOST,
    INTEGER,
    NON_EMPTY_NO_SPACE,
    OPTIONAL_DSN,
    OPTIONAL_PATH,
    OPTIONAL_URL,
    PATH,
    SECONDS,
    ConfigError,
    above,
    at_least,
    between,
    choice,
    mask_dsn,
    section,
    setting,
)

__all__ = [
    "EnforceConfig",
    "HealthConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ReplicationConfig",
    "SecurityConfig",
    "StorageConfig",
    "TelemetryConfig",
]


@section("storage")
@attrs.frozen(kw_only=True)
class StorageConfig:
    """The warm storage file and the capacity of the hot cache."""

    warm_storage: pathlib.Path = setting(
        PATH,
        pathlib.Path("var/data/warm_storage.bin"),
        help="Warm storage file, the durable rule store; "
        "a relative path is taken from the working directory.",
    )
    hot_capacity: int = setting(
        INTEGER,
        DEFAULT_HOT_CAPACITY,
        constraint=at_least(1),
        help="Most rules held in the in-memory hot cache (LRU).",
    )


@section("logging", flag_prefix="log")
@attrs.frozen(kw_only=True)
class LoggingConfig:
    """The service log (stderr)."""

    #: An upper-case level name: DEBUG, INFO, WARNING or ERROR.
    level: str = setting(
        choice("DEBUG", "INFO", "WARNING", "ERROR", metavar="LEVEL", upper=True),
        "INFO",
        help="Least severe level written to the log on stderr.",
    )
    #: "text" or "json".
    format: str = setting(
        choice("text", "json", metavar="FORMAT", upper=False),
        "text",
        help="text: one human-readable line per event; json: one JSON object per line "
        "(timestamp, level, logger, message and structured fields).",
    )


@section("metrics", flag_prefix="metrics")
@attrs.frozen(kw_only=True)
class MetricsConfig:
    """The Prometheus endpoint (``/metrics``); port 0 turns it off."""

    host: str = setting(
        HOST,
        "127.0.0.1",
        constraint=NON_EMPTY_NO_SPACE,
        help="Address the Prometheus /metrics endpoint listens on (loopback by default).",
    )
    port: int = setting(
        INTEGER,
        9464,
        constraint=between(0, 65535),
        help="TCP port of the Prometheus /metrics endpoint; 0 turns it off.",
    )

    @property
    def enabled(self) -> bool:
        return self.port != 0


@section("health")
@attrs.frozen(kw_only=True)
class HealthConfig:
    """When rules count as stale, and whether staleness fails the health check."""

    max_staleness: float = setting(
        SECONDS,
        0.0,
        constraint=at_least(0),
        help="Seconds after the last successful refresh when the rules count as stale "
        "(status and metrics say so); 0 = twice the refresh interval.",
    )
    fail_when_stale: bool = setting(
        BOOLEAN,
        False,
        help="Report NOT_SERVING on the health check while the rules are stale "
        "(default: degraded but up).",
    )

    def staleness_limit(self, refresh_interval: float) -> float:
        """Seconds after the last success when rules are stale (0 means 2x the interval)."""
        return staleness_limit(self.max_staleness, refresh_interval)


@section("enforce")
@attrs.frozen(kw_only=True)
class EnforceConfig:
    """Enforce: where intents without a vector are encoded."""

    #: None: not set; requests without a vector are then denied (fail-closed).
    management_plane_url: str | None = setting(
        OPTIONAL_URL,
        None,
        help="Base URL of the Guard management plane (e.g. http://127.0.0.1:8001/api/v2): "
        "Enforce requests without an intent_vector are encoded by POST <URL>/encode/intent. "
        "Unset, such requests are denied (fail-closed).",
    )


@section("replication", flag_prefix="replication")
@attrs.frozen(kw_only=True)
class ReplicationConfig:
    """Fleet mode: the PostgreSQL database the replicas replicate their rules through."""

    #: None: a single node (the default).
    dsn: str | None = setting(
        OPTIONAL_DSN,
        None,
        stem="replication",
        repr=False,
        help="Fleet mode: replicate the rule set through this PostgreSQL database "
        "(postgresql://USER@HOST:PORT/DB?...) with every other replica given the same URL. "
        "Put no password in it: use --replication-password-file or libpq's environment "
        "(PGPASSWORD, ~/.pgpass). Unset: a single node, rules in warm storage only.",
    )
    password_file: pathlib.Path | None = setting(
        OPTIONAL_PATH,
        None,
        help="File holding the PostgreSQL password of --replication (one line; it must not "
        "be readable by group or others). Never logged.",
    )
    #: 0: no limit.
    max_lag: float = setting(
        SECONDS,
        0.0,
        constraint=at_least(0),
        stem="max_replication_lag",
        help="Seconds this replica may be behind the fleet (or out of touch with its "
        "database) before its rules count as stale; with --fail-when-stale the health "
        "check then reports NOT_SERVING. 0 = no limit.",
    )
    tombstone_retention: float = setting(
        SECONDS,
        7 * 86400.0,
        constraint=above(0),
        stem="tombstone_retention",
        help="Seconds a removed rule's tombstone stays in the database (604800 = 7 days); "
        "a replica stopped for longer resynchronises the whole rule set when it returns.",
    )

    @property
    def enabled(self) -> bool:
        return self.dsn is not None

    @property
    def masked_dsn(self) -> str:
        """The DSN with any password replaced by ``***``: the only form to log."""
        return "" if self.dsn is None else mask_dsn(self.dsn)

    def check(self) -> None:
        """Raise :class:`ConfigError` for combinations that cannot work."""
        if self.password_file is not None and self.dsn is None:
            raise ConfigError("replication: password_file needs dsn (--replication)")


@section("security")
@attrs.frozen(kw_only=True)
class SecurityConfig:
    """TLS for gRPC and the admin token for mutating RPCs."""

    tls_cert: pathlib.Path | None = setting(
        OPTIONAL_PATH,
        None,
        help="PEM certificate chain: serve gRPC over TLS (needs --tls-key).",
    )
    tls_key: pathlib.Path | None = setting(
        OPTIONAL_PATH, None, help="PEM private key of --tls-cert."
    )
    tls_client_ca: pathlib.Path | None = setting(
        OPTIONAL_PATH,
        None,
        help="PEM CA bundle: require client certificates signed by it (mutual TLS).",
    )
    admin_token_file: pathlib.Path | None = setting(
        OPTIONAL_PATH,
        None,
        help="File holding the admin token: InstallRules, RemovePolicy, RemoveAgentRules "
        "and RefreshRules then require 'authorization: Bearer <token>' metadata.",
    )
    auth_reads: bool = setting(
        BOOLEAN,
        False,
        help="With --admin-token-file, require the token on read-only RPCs too.",
    )

    def check(self) -> None:
        """Raise :class:`ConfigError` for combinations that cannot work.

        Kept out of construction so each setting can be given on its own source;
        the service calls it before it starts.
        """
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("security: tls_cert and tls_key go together; set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("security: tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.auth_reads and self.admin_token_file is None:
            raise ConfigError("security: auth_reads needs admin_token_file")


@section("telemetry", flag_prefix="telemetry")
@attrs.frozen(kw_only=True)
class TelemetryConfig:
    """Recording Enforce decisions: on or off, where, how long, how much, how batched."""

    enabled: bool = setting(
        BOOLEAN,
        True,
        help="Record every Enforce decision as a session (QueryTelemetry, GetSession, "
        "guardrefresh sessions); with --no-telemetry nothing is recorded and "
        "QueryTelemetry answers FAILED_PRECONDITION.",
    )
    db: pathlib.Path | None = setting(
        OPTIONAL_PATH,
        None,
        help="SQLite file of the enforcement sessions; empty = telemetry.db in the "
        "directory of --warm-storage.",
    )
    retention: float = setting(
        SECONDS,
        7 * 86400.0,
        constraint=above(0),
        help="Seconds a session is kept (604800 = 7 days); older ones are deleted in the "
        "background.",
    )
    max_sessions: int = setting(
        INTEGER,
        1_000_000,
        constraint=at_least(1),
        help="Most sessions kept; beyond it the oldest are deleted in the background.",
    )
    batch_window: float = setting(
        SECONDS,
        0.25,
        constraint=between(0.001, 1),
        help="Seconds the writer lets sessions gather before committing them in one "
        "transaction; a crash (SIGKILL) loses at most this window.",
    )
    queue_size: int = setting(
        INTEGER,
        10_000,
        constraint=between(1, 1_000_000),
        help="Sessions waiting for the writer at most; when full, new ones are dropped "
        "and counted (guardrefresh_telemetry_dropped_total), Enforce never waits.",
    )

    def database_path(self, warm_storage: pathlib.Path) -> pathlib.Path:
        """``db``, or ``telemetry.db`` next to the warm storage file when unset."""
        return self.db if self.db is not None else warm_storage.with_name("telemetry.db")
