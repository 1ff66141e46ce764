"""The configuration value objects: :class:`ServiceConfig` and its sections."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..refresh import SchedulerConfig
from ._errors import ConfigError
from ._settings import SECTIONS, SETTINGS, SETTINGS_BY_NAME

__all__ = [
    "LoggingConfig",
    "ServerConfig",
    "ServiceConfig",
    "StorageConfig",
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


#: The class of each section; its keyword arguments are the section's setting keys.
SECTION_CLASSES: Mapping[str, Callable[..., object]] = {
    "server": ServerConfig,
    "storage": StorageConfig,
    "scheduler": SchedulerConfig,
    "logging": LoggingConfig,
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
