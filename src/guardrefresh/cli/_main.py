"""The ``guardrefresh`` command (also ``python -m guardrefresh``).

Without a subcommand, the command runs the service. Subcommands are dispatched on
the first argument *before* any parsing: when ``argv[0]`` is the name of a
registered subcommand, that subcommand gets the rest of the line and parses it with
its own parser; anything else goes to the service's parser. That is unambiguous
because the service takes no positional arguments, and it keeps the service's
settings flags off the subcommands (and vice versa) without argparse subparsers,
which would accept ``guardrefresh --hot-capacity 5 status``.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections.abc import Callable, Mapping, Sequence

from ..config import (
    DEFAULT_ORIGIN,
    ConfigError,
    ResolvedConfig,
    format_help,
    parse_args,
    render_config,
    resolve_config,
    version_text,
)
from ._client import CLIENT_COMMANDS
from ._enforce import enforce_command
from ._logging import configure_logging
from ._warm import WARM_COMMANDS

__all__ = ["Command", "main"]

logger = logging.getLogger(__name__)

#: A subcommand: called with the arguments after its name, returns the exit code.
Command = Callable[[Sequence[str]], int]

#: Subcommands by name: ``status``, ``refresh``, ``install``, ``get``, ``remove-policy``,
#: ``remove-agent`` and ``enforce`` talk to a running service; ``warm ...`` works on the files.
_COMMANDS: Mapping[str, Command] = types.MappingProxyType(
    {**CLIENT_COMMANDS, "enforce": enforce_command, **WARM_COMMANDS}
)

_EXIT_BAD_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code.

    *argv* excludes the program name (default: ``sys.argv[1:]``). A bad setting or a
    malformed command line prints one ``guardrefresh: error: ...`` line to stderr and
    returns 2. Otherwise the exit code is that of the service (0 after a clean
    shutdown, 1 when it cannot start) or of the subcommand.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _COMMANDS:
        return _COMMANDS[args[0]](args[1:])
    return _serve(args, os.environ)


def _error(message: str) -> int:
    print(f"guardrefresh: error: {message}", file=sys.stderr)
    return _EXIT_BAD_CONFIG


def _serve(args: Sequence[str], environ: Mapping[str, str]) -> int:
    try:
        options = parse_args(args)
        if options.show_help:
            sys.stdout.write(format_help())
            return 0
        if options.show_version:
            print(version_text())
            return 0
        resolved = resolve_config(options, environ)
    except ConfigError as exc:
        return _error(str(exc))
    if options.print_config:
        sys.stdout.write(render_config(resolved.config, origins=resolved.origins))
        return 0

    configure_logging(resolved.config.logging.level, fmt=resolved.config.logging.format)
    _log_start(resolved)
    # Imported here, not at the top: it pulls in grpclib and trio-asyncio, which
    # --help, --version and --print-config have no use for.
    from ..app import run_service

    return run_service(resolved.config)


def _log_start(resolved: ResolvedConfig) -> None:
    changed = [
        f"{name} from {origin}"
        for name, origin in resolved.origins.items()
        if origin != DEFAULT_ORIGIN
    ]
    logger.info(
        "%s starting; config file: %s; settings not at their default: %s",
        version_text(),
        resolved.config_file or "none",
        ", ".join(changed) or "none",
    )
    for name in resolved.unknown_environment:
        logger.warning("ignoring unknown environment variable %s (see --help)", name)
