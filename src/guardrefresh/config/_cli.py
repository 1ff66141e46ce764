"""The command line of the service, generated from the settings table.

Parsing only: flag values are kept as the raw text the user typed and checked by
:func:`~guardrefresh.config.resolve_config`, which knows how to name them in errors.
Nothing is printed and nothing exits here.
"""

from __future__ import annotations

import argparse
import pathlib
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import attrs

from .. import __version__
from ..settings import ENV_PREFIX, Setting
from ._errors import ConfigError, UsageError
from ._service import CONFIG_ENV, SECTIONS, SETTINGS

__all__ = ["PROG", "CliOptions", "build_parser", "format_help", "parse_args", "version_text"]

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
    text = (
        f"{setting.help} Allowed: {setting.allowed}. Default: {setting.default_text}. "
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


def version_text() -> str:
    """What ``--version`` prints."""
    return f"{PROG} {__version__}"
