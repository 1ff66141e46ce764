"""Reading the configuration from its sources.

Sources, strongest first: command-line flags, ``GUARDREFRESH_*`` environment
variables, a TOML file (``--config PATH`` or ``GUARDREFRESH_CONFIG``), the defaults
of the settings table. Every value a source supplies is checked, even one that a
stronger source overrides, so a broken file or variable is reported the first time
the service starts rather than the day the override is removed.

Everything here is pure apart from reading the TOML file: *argv* and *environ* are
parameters, and nothing is printed.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import textwrap
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import attrs

from .. import __version__
from ._errors import ConfigError, UsageError
from ._service import ServiceConfig, build_section
from ._settings import (
    CONFIG_ENV,
    DEFAULT_ORIGIN,
    ENV_PREFIX,
    SECTIONS,
    SETTINGS,
    Setting,
    toml_key,
    toml_string,
)

__all__ = [
    "CliOptions",
    "ResolvedConfig",
    "build_parser",
    "load_config",
    "parse_args",
    "resolve_config",
]

PROG = "guardrefresh"


@attrs.frozen(kw_only=True)
class CliOptions:
    """What the command line asked for, besides settings.

    ``flags`` maps setting names (``"server.port"``) to the raw values of the flags
    that were given: strings, or booleans for ``--x/--no-x`` switches. They are
    checked by :func:`resolve_config`, which knows how to name them in errors.
    """

    config_file: pathlib.Path | None = None
    print_config: bool = False
    show_help: bool = False
    show_version: bool = False
    flags: Mapping[str, str | bool] = attrs.field(factory=dict)


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
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print usage and call sys.exit(2); the caller decides instead.
        raise UsageError(f"{message} (see {PROG} --help)")


class _Stop(Exception):
    """Raised by --help and --version the moment argparse meets them."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _StopAction(argparse.Action):
    # Like argparse's own help and version actions (the rest of the line is not
    # parsed, so `--help --bogus` still shows help), but without printing or exiting.
    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        raise _Stop(self.dest)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    # argparse breaks words at hyphens: "--no-\nscheduler", "non-\nempty".
    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )


def _help_text(setting: Setting[Any]) -> str:
    default = setting.kind.to_text(setting.default)
    text = (
        f"{setting.help} Allowed: {setting.allowed}. Default: {default}. "
        f"Env: {setting.env}. TOML: {setting.toml_name}."
    )
    return text.replace("%", "%%")  # argparse %-formats help strings


_DESCRIPTION = "The rule store of the Guard enforcement data plane, served over gRPC."

_EPILOG = "\n\n".join(
    textwrap.fill(paragraph, width=79, break_on_hyphens=False)
    for paragraph in (
        "Settings are taken from, strongest first: command-line flags, "
        f"{ENV_PREFIX}* environment variables, the TOML file given by --config "
        f"(or {CONFIG_ENV}), the defaults. An empty environment variable counts as "
        "unset. --print-config shows the result as a TOML file that --config accepts.",
        "Exit status: 0 after a clean shutdown, 1 when the service cannot start "
        "(port in use, warm storage unreadable), 2 for a bad setting.",
    )
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the service command, generated from the settings table.

    Setting flags store their raw value under the setting's name and are absent from
    the namespace when not given. The parser raises :class:`UsageError` instead of
    exiting; ``--help`` and ``--version`` raise an internal exception that
    :func:`parse_args` turns into :attr:`CliOptions.show_help` / ``show_version``.
    """
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        add_help=False,
        # Abbreviations would make adding a flag later break scripts that relied on
        # a prefix of it.
        allow_abbrev=False,
        formatter_class=_Formatter,
    )
    general = parser.add_argument_group("general options")
    general.add_argument("-h", "--help", action=_StopAction, help="Show this help and exit.")
    general.add_argument("--version", action=_StopAction, help="Show the version and exit.")
    general.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"Read settings from this TOML file. Default: none. Env: {CONFIG_ENV}.",
    )
    general.add_argument(
        "--print-config",
        action="store_true",
        help="Print the effective configuration as TOML and exit.",
    )
    for section in SECTIONS:
        group = parser.add_argument_group(f"[{section}] settings")
        for setting in SETTINGS:
            if setting.section != section:
                continue
            if setting.kind.is_switch:
                group.add_argument(
                    setting.flag,
                    action=argparse.BooleanOptionalAction,
                    dest=setting.name,
                    default=argparse.SUPPRESS,
                    help=_help_text(setting),
                )
            else:
                group.add_argument(
                    setting.flag,
                    dest=setting.name,
                    metavar=setting.kind.metavar,
                    default=argparse.SUPPRESS,
                    help=_help_text(setting),
                )
    return parser


def format_help() -> str:
    """The ``--help`` text."""
    return build_parser().format_help()


def parse_args(argv: Sequence[str]) -> CliOptions:
    """Parse the command line of the service.

    Raises :class:`UsageError` for a malformed line, :class:`ConfigError` for an empty
    ``--config``. Setting values are not checked here (see :func:`resolve_config`).
    """
    try:
        namespace = vars(build_parser().parse_args(list(argv)))
    except _Stop as stop:
        return CliOptions(show_help=stop.what == "help", show_version=stop.what == "version")
    config = namespace.pop("config")
    print_config = namespace.pop("print_config")
    if config == "":
        # pathlib.Path("") is the working directory; say what is wrong instead.
        raise ConfigError("--config: invalid value ''; allowed: a file path")
    return CliOptions(
        config_file=None if config is None else pathlib.Path(config),
        print_config=print_config,
        flags=namespace,
    )


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
    by_name = {s.name: s for s in SETTINGS}
    values: dict[str, tuple[Any, str]] = {}
    for name, raw in options.flags.items():
        setting = by_name[name]
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

_WORD = re.compile(r"\w+")


def _inconsistent(section: str, exc: ValueError, origins: Mapping[str, str]) -> ConfigError:
    # The section's class checks combinations of settings (backoff_initial must not
    # exceed refresh_interval...); its message names the keys, but not where the
    # values came from, which is what the user has to go and fix.
    mentioned = set(_WORD.findall(str(exc)))
    sources = [
        f"{s.key} from {origins[s.name]}"
        for s in SETTINGS
        if s.section == section and s.key in mentioned
    ]
    where = f" ({'; '.join(sources)})" if sources else ""
    return ConfigError(f"inconsistent [{section}] settings: {exc}{where}")


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

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for setting in SETTINGS:
        for source in (flags, environment, from_file):
            if setting.name in source:
                values[setting.name], origins[setting.name] = source[setting.name]
                break
        else:
            values[setting.name], origins[setting.name] = setting.default, DEFAULT_ORIGIN

    sections: dict[str, Any] = {}
    for section in SECTIONS:
        try:
            sections[section] = build_section(section, values)
        except ConfigError:
            raise
        except ValueError as exc:
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


def version_text() -> str:
    """What ``--version`` prints."""
    return f"{PROG} {__version__}"
