"""The configuration value objects: :class:`ServiceConfig` and its sections."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..refresh import SchedulerConfig
from ._errors import ConfigError
from ._settings import SECTIONS, SETTINGS, SETTINGS_BY_NAME, mask_dsn

__all__ = [
    "EnforceConfig",
    "HealthConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ReplicationConfig",
    "SecurityConfig",
    "ServerConfig",
    "ServiceConfig",
    "StorageConfig",
    "TelemetryConfig",
    "build_section",
    "setting_values",
]


_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _validator(section: str) -> _Validator:
    """Checks a field of *section* against its row of the settings table."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        setting = SETTINGS_BY_NAME[f"{section}.{attribute.name}"]
        if not setting.is_valid(value):
            raise ConfigError(
                f"{setting.name}: invalid value {value!r}; allowed: {setting.allowed}"
            )

    return check


def _default(name: str) -> Any:
    return SETTINGS_BY_NAME[name].default


_SERVER = _validator("server")
_STORAGE = _validator("storage")
_LOGGING = _validator("logging")
_METRICS = _validator("metrics")
_HEALTH = _validator("health")
_ENFORCE = _validator("enforce")
_SECURITY = _validator("security")
_REPLICATION = _validator("replication")
_TELEMETRY = _validator("telemetry")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """The gRPC server: where it listens, message and request limits, shutdown grace."""

    host: str = attrs.field(default=_default("server.host"), validator=_SERVER)
    port: int = attrs.field(default=_default("server.port"), validator=_SERVER)
    shutdown_grace: float = attrs.field(
        default=_default("server.shutdown_grace"), validator=_SERVER
    )
    max_message_bytes: int = attrs.field(
        default=_default("server.max_message_bytes"), validator=_SERVER
    )
    max_rules_per_install: int = attrs.field(
        default=_default("server.max_rules_per_install"), validator=_SERVER
    )
    #: 0: derived from the open-file limit (see ``guardrefresh.server.max_connections_for``).
    max_connections: int = attrs.field(
        default=_default("server.max_connections"), validator=_SERVER
    )
    #: 0: never.
    idle_timeout: float = attrs.field(default=_default("server.idle_timeout"), validator=_SERVER)
    max_concurrent_streams: int = attrs.field(
        default=_default("server.max_concurrent_streams"), validator=_SERVER
    )
    max_pending_request_bytes: int = attrs.field(
        default=_default("server.max_pending_request_bytes"), validator=_SERVER
    )
    request_timeout: float = attrs.field(
        default=_default("server.request_timeout"), validator=_SERVER
    )
    #: 0 = sized to this machine: 8 per CPU.
    max_concurrent_rpcs: int = attrs.field(
        default=_default("server.max_concurrent_rpcs"), validator=_SERVER
    )
    #: 0 = 4 x max_concurrent_rpcs.
    max_queued_rpcs: int = attrs.field(
        default=_default("server.max_queued_rpcs"), validator=_SERVER
    )
    #: None: no ready file.
    ready_file: pathlib.Path | None = attrs.field(
        default=_default("server.ready_file"), validator=_SERVER
    )


@attrs.frozen(kw_only=True)
class StorageConfig:
    """The warm storage file and the capacity of the hot cache."""

    warm_storage: pathlib.Path = attrs.field(
        default=_default("storage.warm_storage"), validator=_STORAGE
    )
    hot_capacity: int = attrs.field(default=_default("storage.hot_capacity"), validator=_STORAGE)


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """The service log (stderr)."""

    #: An upper-case level name: DEBUG, INFO, WARNING or ERROR.
    level: str = attrs.field(default=_default("logging.level"), validator=_LOGGING)
    #: "text" or "json".
    format: str = attrs.field(default=_default("logging.format"), validator=_LOGGING)


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """The Prometheus endpoint (``/metrics``); port 0 turns it off."""

    host: str = attrs.field(default=_default("metrics.host"), validator=_METRICS)
    port: int = attrs.field(default=_default("metrics.port"), validator=_METRICS)

    @property
    def enabled(self) -> bool:
        return self.port != 0


@attrs.frozen(kw_only=True)
class HealthConfig:
    """When rules count as stale, and whether staleness fails the health check."""

    max_staleness: float = attrs.field(default=_default("health.max_staleness"), validator=_HEALTH)
    fail_when_stale: bool = attrs.field(
        default=_default("health.fail_when_stale"), validator=_HEALTH
    )

    def staleness_limit(self, refresh_interval: float) -> float:
        """Seconds after the last success when rules are stale (0 means 2x the interval)."""
        return self.max_staleness or 2 * refresh_interval


@attrs.frozen(kw_only=True)
class EnforceConfig:
    """Enforce: where intents without a vector are encoded."""

    #: None: not set; requests without a vector are then denied (fail-closed).
    management_plane_url: str | None = attrs.field(
        default=_default("enforce.management_plane_url"), validator=_ENFORCE
    )


@attrs.frozen(kw_only=True)
class ReplicationConfig:
    """Fleet mode: the PostgreSQL database the replicas replicate their rules through."""

    #: None: a single node (the default).
    dsn: str | None = attrs.field(
        default=_default("replication.dsn"), validator=_REPLICATION, repr=False
    )
    password_file: pathlib.Path | None = attrs.field(
        default=_default("replication.password_file"), validator=_REPLICATION
    )
    #: 0: no limit.
    max_lag: float = attrs.field(default=_default("replication.max_lag"), validator=_REPLICATION)
    tombstone_retention: float = attrs.field(
        default=_default("replication.tombstone_retention"), validator=_REPLICATION
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


@attrs.frozen(kw_only=True)
class SecurityConfig:
    """TLS for gRPC and the admin token for mutating RPCs."""

    tls_cert: pathlib.Path | None = attrs.field(
        default=_default("security.tls_cert"), validator=_SECURITY
    )
    tls_key: pathlib.Path | None = attrs.field(
        default=_default("security.tls_key"), validator=_SECURITY
    )
    tls_client_ca: pathlib.Path | None = attrs.field(
        default=_default("security.tls_client_ca"), validator=_SECURITY
    )
    admin_token_file: pathlib.Path | None = attrs.field(
        default=_default("security.admin_token_file"), validator=_SECURITY
    )
    auth_reads: bool = attrs.field(default=_default("security.auth_reads"), validator=_SECURITY)

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


@attrs.frozen(kw_only=True)
class TelemetryConfig:
    """Recording Enforce decisions: on or off, where, how long, how much, how batched."""

    enabled: bool = attrs.field(default=_default("telemetry.enabled"), validator=_TELEMETRY)
    db: pathlib.Path | None = attrs.field(default=_default("telemetry.db"), validator=_TELEMETRY)
    retention: float = attrs.field(default=_default("telemetry.retention"), validator=_TELEMETRY)
    max_sessions: int = attrs.field(
        default=_default("telemetry.max_sessions"), validator=_TELEMETRY
    )
    batch_window: float = attrs.field(
        default=_default("telemetry.batch_window"), validator=_TELEMETRY
    )
    queue_size: int = attrs.field(default=_default("telemetry.queue_size"), validator=_TELEMETRY)

    def database_path(self, warm_storage: pathlib.Path) -> pathlib.Path:
        """``db``, or ``telemetry.db`` next to the warm storage file when unset."""
        return self.db if self.db is not None else warm_storage.with_name("telemetry.db")


@attrs.frozen(kw_only=True)
class ServiceConfig:
    """The whole configuration of one service process.

    Immutable; every field is validated on construction (a bad value raises
    :class:`ConfigError`; the scheduler section raises :class:`ValueError` from
    :class:`~guardrefresh.refresh.SchedulerConfig`). ``ServiceConfig()`` is the
    configuration with every default. Derive variants with :func:`attrs.evolve`.
    """

    server: ServerConfig = attrs.field(
        factory=ServerConfig, validator=attrs.validators.instance_of(ServerConfig)
    )
    storage: StorageConfig = attrs.field(
        factory=StorageConfig, validator=attrs.validators.instance_of(StorageConfig)
    )
    scheduler: SchedulerConfig = attrs.field(
        factory=SchedulerConfig, validator=attrs.validators.instance_of(SchedulerConfig)
    )
    logging: LoggingConfig = attrs.field(
        factory=LoggingConfig, validator=attrs.validators.instance_of(LoggingConfig)
    )
    metrics: MetricsConfig = attrs.field(
        factory=MetricsConfig, validator=attrs.validators.instance_of(MetricsConfig)
    )
    health: HealthConfig = attrs.field(
        factory=HealthConfig, validator=attrs.validators.instance_of(HealthConfig)
    )
    enforce: EnforceConfig = attrs.field(
        factory=EnforceConfig, validator=attrs.validators.instance_of(EnforceConfig)
    )
    replication: ReplicationConfig = attrs.field(
        factory=ReplicationConfig, validator=attrs.validators.instance_of(ReplicationConfig)
    )
    security: SecurityConfig = attrs.field(
        factory=SecurityConfig, validator=attrs.validators.instance_of(SecurityConfig)
    )
    telemetry: TelemetryConfig = attrs.field(
        factory=TelemetryConfig, validator=attrs.validators.instance_of(TelemetryConfig)
    )


#: The class of each section; its keyword arguments are the section's setting keys.
SECTION_CLASSES: Mapping[str, Callable[..., object]] = {
    "server": ServerConfig,
    "storage": StorageConfig,
    "scheduler": SchedulerConfig,
    "logging": LoggingConfig,
    "metrics": MetricsConfig,
    "health": HealthConfig,
    "enforce": EnforceConfig,
    "replication": ReplicationConfig,
    "security": SecurityConfig,
    "telemetry": TelemetryConfig,
}
assert tuple(SECTION_CLASSES) == SECTIONS


def build_section(section: str, values: Mapping[str, Any]) -> object:
    """Construct one section from ``{"section.key": value}`` (all of its settings).

    Raises whatever the section's class raises for bad or inconsistent values
    (:class:`ValueError` or a subclass).
    """
    return SECTION_CLASSES[section](
        **{s.key: values[s.name] for s in SETTINGS if s.section == section}
    )


def setting_values(config: ServiceConfig) -> dict[str, Any]:
    """``{"section.key": value}`` for every setting of *config*, in table order."""
    return {s.name: getattr(getattr(config, s.section), s.key) for s in SETTINGS}
