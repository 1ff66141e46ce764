"""The frame every subcommand shares: its parser, its exit codes, one error line.

Output goes to stdout; a failure prints exactly one ``guardrefresh: error: ...`` line to
stderr, never a traceback. Exit codes:

- 0: done;
- 1: the call failed (the server refused it, e.g. ``INVALID_ARGUMENT: rule 'r1': ...``;
  the target was unreachable or did not answer in time; TLS failed) or an input file
  could not be read or is invalid;
- 2: the command line itself is wrong (unknown option, missing argument, bad
  ``--target``, contradictory TLS options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "CommandParser",
    "command_parser",
    "print_json",
    "run_command",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: What a shell reports for a process ended by SIGINT.
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A subcommand failed: ``str()`` is the one line for stderr, ``code`` the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class CommandParser(argparse.ArgumentParser):
    """An argparse parser that reports a bad command line as a :class:`CommandError`.

    argparse itself would print the usage and exit; the commands print one line.
    """

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see {self.prog} --help)", EXIT_USAGE)


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    action: Callable[[argparse.Namespace], int],
) -> int:
    """Parse ``argv`` and run ``action``; turn failures into one stderr line and a code."""
    try:
        try:
            options = parser.parse_args(list(argv))
        except SystemExit as exc:  # --help has been printed
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        return action(options)
    except CommandError as exc:
        _print_error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        _print_error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``guardrefresh warm export ... | head``): stop quietly,
        # and keep Python's final flush of stdout from failing (and printing) again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_FAILED


def _print_error(message: str) -> None:
    # One line, whatever the server put in its message.
    line = " ".join(message.splitlines())
    print(f"guardrefresh: error: {line}", file=sys.stderr)


def command_parser(name: str, description: str) -> CommandParser:
    """The parser of ``guardrefresh NAME`` for a command that calls the service."""
    return CommandParser(
        prog=f"guardrefresh {name}",
        description=description,
        epilog="Exit codes: 0 done, 1 the call failed, 2 bad command line.",
    )


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))
