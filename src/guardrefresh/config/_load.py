"""Reading the configuration from its sources.

Sources, strongest first: command-line flags, ``GUARDREFRESH_*`` environment
variables, a TOML file (``--config PATH`` or ``GUARDREFRESH_CONFIG``), the defaults
declared with each setting. Every value a source supplies is checked, even one that a
stronger source overrides, so a broken file or variable is reported the first time
the service starts rather than the day the override is removed.

Everything here is pure apart from reading the TOML file: *argv* and *environ* are
parameters, and nothing is printed.
"""

from __future__ import annotations

import pathlib
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..settings import ENV_PREFIX, Setting, toml_key, toml_string
from ._cli import CliOptions, parse_args
from ._errors import ConfigError
from ._service import (
    CONFIG_ENV,
    DEFAULT_ORIGIN,
    SECTIONS,
    SETTINGS,
    SETTINGS_BY_NAME,
    ServiceConfig,
    build_section,
)

__all__ = ["ResolvedConfig", "load_config", "resolve_config"]


@attrs.frozen(kw_only=True)
class ResolvedConfig:
    """The effective configuration and where each value came from."""

    config: ServiceConfig
    #: ``"server.port"`` -> ``"--port"``, ``"environment variable GUARDREFRESH_PORT"``,
    #: ``"<file>: [server] port"`` or :data:`DEFAULT_ORIGIN`.
    origins: Mapping[str, str]
    #: The TOML file that was read, if any.
    config_file: pathlib.Path | None
    #: ``GUARDREFRESH_*`` variables that are set but mean nothing (typos, most likely).
    unknown_environment: tuple[str, ...]


# ---------------------------------------------------------------------------
# Reading each source


def _invalid(origin: str, shown: str, setting: Setting[Any]) -> ConfigError:
    return ConfigError(f"{origin}: invalid value {shown}; allowed: {setting.allowed}")


def _from_text(setting: Setting[Any], text: str, origin: str) -> Any:
    try:
        value = setting.kind.from_text(text)
    except (ValueError, TypeError):
        raise _invalid(origin, repr(text), setting) from None
    if not setting.is_valid(value):
        raise _invalid(origin, repr(text), setting)
    return value


def _flag_values(options: CliOptions) -> dict[str, tuple[Any, str]]:
    values: dict[str, tuple[Any, str]] = {}
    for name, raw in options.flags.items():
        setting = SETTINGS_BY_NAME[name]
        if isinstance(raw, bool):
            flag = setting.flag if raw else setting.negative_flag
            assert flag is not None
            values[name] = (raw, flag)
        else:
            values[name] = (_from_text(setting, raw, setting.flag), setting.flag)
    return values


def _environment_values(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    values: dict[str, tuple[Any, str]] = {}
    for setting in SETTINGS:
        text = environ.get(setting.env, "")
        if text:
            origin = f"environment variable {setting.env}"
            values[setting.name] = (_from_text(setting, text, origin), origin)
    return values


def _unknown_environment(environ: Mapping[str, str]) -> tuple[str, ...]:
    # GUARDREFRESH_TARGET belongs to the client subcommands (where to connect).
    known = {s.env for s in SETTINGS} | {CONFIG_ENV, ENV_PREFIX + "TARGET"}
    return tuple(sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known))


def _describe_toml(value: object) -> str:
    """A TOML value as the user wrote it (near enough), for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "(a table)"
    if isinstance(value, list):
        return "(an array)"
    return f"(a date/time, {value})"


def _toml_values(path: pathlib.Path) -> dict[str, tuple[Any, str]]:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML file: {exc}") from None

    tables = {section: {s.key: s for s in SETTINGS if s.section == section} for section in SECTIONS}
    known_sections = ", ".join(f"[{section}]" for section in SECTIONS)
    values: dict[str, tuple[Any, str]] = {}
    for section, table in document.items():
        if section not in tables:
            kind = "section" if isinstance(table, dict) else "top-level key"
            raise ConfigError(
                f"{path}: unknown {kind} {toml_key(section)}; "
                f"settings belong in one of the sections {known_sections}"
            )
        if not isinstance(table, dict):
            raise ConfigError(
                f"{path}: {section} must be a table ([{section}]), "
                f"not the value {_describe_toml(table)}"
            )
        for key, raw in table.items():
            setting = tables[section].get(key)
            if setting is None:
                raise ConfigError(
                    f"{path}: unknown key {toml_key(key)} in [{section}]; "
                    f"known keys: {', '.join(tables[section])}"
                )
            origin = f"{path}: {setting.toml_name}"
            try:
                value = setting.kind.from_toml(raw)
            except (ValueError, TypeError):
                raise _invalid(origin, _describe_toml(raw), setting) from None
            if not setting.is_valid(value):
                raise _invalid(origin, _describe_toml(raw), setting)
            values[setting.name] = (value, origin)
    return values


# ---------------------------------------------------------------------------
# Putting it together


def _inconsistent(section: str, exc: ConfigError, origins: Mapping[str, str]) -> ConfigError:
    # The section's class checks combinations of settings (backoff_initial must not
    # exceed refresh_interval...); its error names the settings, but not where the
    # values came from, which is what the user has to go and fix.
    sources = [f"{s.key} from {origins[s.name]}" for s in SETTINGS if s.name in exc.settings]
    where = f" ({'; '.join(sources)})" if sources else ""
    return ConfigError(f"inconsistent [{section}] settings: {exc.message}{where}")


def resolve_config(options: CliOptions, environ: Mapping[str, str]) -> ResolvedConfig:
    """Combine flags, environment, TOML file and defaults into one configuration.

    Reads the TOML file named by ``options.config_file`` or, failing that, by
    ``GUARDREFRESH_CONFIG`` in *environ*. Raises :class:`ConfigError` for any bad
    value, unknown TOML section or key, or unusable file, naming the source.
    """
    flags = _flag_values(options)
    environment = _environment_values(environ)
    config_file = options.config_file
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = pathlib.Path(environ[CONFIG_ENV])
    from_file = {} if config_file is None else _toml_values(config_file)

    # Only supplied values are passed on: the section classes fill in the defaults,
    # including those computed from other settings.
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for setting in SETTINGS:
        origins[setting.name] = DEFAULT_ORIGIN
        for source in (flags, environment, from_file):
            if setting.name in source:
                values[setting.name], origins[setting.name] = source[setting.name]
                break

    sections: dict[str, Any] = {}
    for section in SECTIONS:
        try:
            sections[section] = build_section(section, values)
        except ConfigError as exc:
            # Each value was checked on its own above: what is left is a combination.
            raise _inconsistent(section, exc, origins) from None
    return ResolvedConfig(
        config=ServiceConfig(**sections),
        origins=origins,
        config_file=config_file,
        unknown_environment=_unknown_environment(environ),
    )


def load_config(
    argv: Sequence[str], environ: Mapping[str, str]
) -> tuple[ServiceConfig, CliOptions]:
    """Parse *argv* (without the program name) and resolve the configuration.

    Raises :class:`ConfigError` (:class:`UsageError` for a malformed command line).
    ``--help`` and ``--version`` do not stop the configuration from being resolved
    here; the command line checks ``show_help`` / ``show_version`` first.
    """
    options = parse_args(argv)
    return resolve_config(options, environ).config, options
