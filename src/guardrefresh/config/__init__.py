"""Configuration of the service: settings, their sources and their validation.

Every setting is declared once in a table (see ``_settings.py``); command-line flags,
``GUARDREFRESH_*`` environment variables, the TOML file, ``--help`` and
``--print-config`` are generated from it.
"""

from ._errors import ConfigError, UsageError
from ._load import (
    CliOptions,
    ResolvedConfig,
    build_parser,
    format_help,
    load_config,
    parse_args,
    resolve_config,
    version_text,
)
from ._render import render_config
from ._service import (
    EnforceConfig,
    HealthConfig,
    LoggingConfig,
    MetricsConfig,
    ReplicationConfig,
    SecurityConfig,
    ServerConfig,
    ServiceConfig,
    StorageConfig,
    TelemetryConfig,
)
from ._settings import CONFIG_ENV, DEFAULT_ORIGIN, ENV_PREFIX, SETTINGS, Setting, mask_dsn

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_ORIGIN",
    "ENV_PREFIX",
    "SETTINGS",
    "CliOptions",
    "ConfigError",
    "EnforceConfig",
    "HealthConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ReplicationConfig",
    "ResolvedConfig",
    "SecurityConfig",
    "ServerConfig",
    "ServiceConfig",
    "Setting",
    "StorageConfig",
    "TelemetryConfig",
    "UsageError",
    "build_parser",
    "format_help",
    "load_config",
    "mask_dsn",
    "parse_args",
    "render_config",
    "resolve_config",
    "version_text",
]
