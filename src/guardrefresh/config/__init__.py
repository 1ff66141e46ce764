"""Configuration of the service: its sections, their sources and ``--print-config``.

Every setting is declared once, as a field of its section class (see
:mod:`guardrefresh.settings`); :data:`SETTINGS`, the command-line flags,
``GUARDREFRESH_*`` environment variables, the TOML file, ``--help`` and
``--print-config`` are generated from those fields.
"""

from ..settings import ENV_PREFIX, Setting, mask_dsn
from ._cli import CliOptions, build_parser, format_help, parse_args, version_text
from ._errors import ConfigError, UsageError
from ._load import ResolvedConfig, load_config, resolve_config
from ._render import render_config
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
from ._service import CONFIG_ENV, DEFAULT_ORIGIN, SETTINGS, ServiceConfig

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
