"""The whole configuration, :class:`ServiceConfig`, and the table of its settings.

:data:`SETTINGS` is generated from the section classes (each field declares its
setting, see :mod:`guardrefresh.settings`); the command line, the environment
variables, the TOML keys, ``--help`` and ``--print-config`` are generated from it.
Adding a setting means adding one field to its section class.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import attrs

from ..refresh import SchedulerConfig
from ..settings import ENV_PREFIX, Setting, section_name, settings_of
from ._sections import (
    EnforceConfig,
    HealthConfig,
    LoggingConfig,
    MetricsConfig,
    ReplicationConfig,
    SecurityConfig,
    StorageConfig,
    TelemetryConfig,
)
from ._server import ServerConfig

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_ORIGIN",
    "SECTIONS",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "ServiceConfig",
    "build_section",
    "setting_values",
]

#: Mirrors ``--config``; not a setting itself (it says where settings come from).
CONFIG_ENV = ENV_PREFIX + "CONFIG"
#: The origin of a value that no source supplied.
DEFAULT_ORIGIN = "default"


def section_field(cls: type[Any]) -> Any:
    """A field of :class:`ServiceConfig` holding section *cls*, by default its defaults."""
    return attrs.field(factory=cls, validator=attrs.validators.instance_of(cls))


@attrs.frozen(kw_only=True)
class ServiceConfig:
    """The whole configuration of one service process: one field per TOML section.

    Immutable; every field is validated on construction (a bad value raises
    :class:`~guardrefresh.settings.ConfigError`). ``ServiceConfig()`` is the
    configuration with every default. Derive variants with :func:`attrs.evolve`.
    """

    server: ServerConfig = section_field(ServerConfig)
    storage: StorageConfig = section_field(StorageConfig)
    scheduler: SchedulerConfig = section_field(SchedulerConfig)
    logging: LoggingConfig = section_field(LoggingConfig)
    metrics: MetricsConfig = section_field(MetricsConfig)
    health: HealthConfig = section_field(HealthConfig)
    enforce: EnforceConfig = section_field(EnforceConfig)
    replication: ReplicationConfig = section_field(ReplicationConfig)
    security: SecurityConfig = section_field(SecurityConfig)
    telemetry: TelemetryConfig = section_field(TelemetryConfig)


def _class_of(field: attrs.Attribute[Any]) -> type[Any]:
    # section_field() made the field with its class as the default's factory.
    section_class: type[Any] = getattr(field.default, "factory")  # noqa: B009
    return section_class


#: The class of each section, in the order of ``--help`` and ``--print-config``.
SECTION_CLASSES: Mapping[str, type[Any]] = types.MappingProxyType(
    {f.name: _class_of(f) for f in attrs.fields(ServiceConfig)}
)
#: The section names, in order.
SECTIONS: tuple[str, ...] = tuple(SECTION_CLASSES)
# Each class says which section it is; a field of ServiceConfig under another name
# would split a section's flags from its TOML table.
assert all(section_name(cls) == name for name, cls in SECTION_CLASSES.items())

#: Every setting, section by section in field order.
SETTINGS: tuple[Setting[Any], ...] = tuple(
    row for cls in SECTION_CLASSES.values() for row in settings_of(cls)
)
SETTINGS_BY_NAME: Mapping[str, Setting[Any]] = types.MappingProxyType({s.name: s for s in SETTINGS})


def build_section(section: str, values: Mapping[str, Any]) -> object:
    """Construct one section from ``{"section.key": value}``.

    Settings of *section* missing from *values* take their defaults (a derived
    default is computed from the values given). Raises
    :class:`~guardrefresh.settings.ConfigError` for bad or inconsistent values.
    """
    return SECTION_CLASSES[section](
        **{s.key: values[s.name] for s in SETTINGS if s.section == section and s.name in values}
    )


def setting_values(config: ServiceConfig) -> dict[str, Any]:
    """``{"section.key": value}`` for every setting of *config*, in table order."""
    return {s.name: getattr(getattr(config, s.section), s.key) for s in SETTINGS}
