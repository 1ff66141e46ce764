"""Subcommands that talk to a running guardrefresh: status, refresh, install, get, removals.

Each one makes a single unary call (``_rpc``) and prints the answer (``_format``).
Output goes to stdout; a failure prints exactly one ``guardrefresh: error: ...`` line to
stderr, never a traceback (``_command``). Exit codes:

- 0: done;
- 1: the call failed (the server refused it, e.g. ``INVALID_ARGUMENT: rule 'r1': ...``;
  the target was unreachable or did not answer in time; TLS failed) or an input file
  could not be read or is invalid;
- 2: the command line itself is wrong (unknown option, missing argument, bad
  ``--target``, contradictory TLS options).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..model import Rule, rule_from_proto, rule_json_text, rule_to_proto, rules_from_json
from ..proto import rule_installation as pb
from ._command import EXIT_OK, EXIT_USAGE, CommandError, command_parser, print_json, run_command
from ._connection import (
    Connection,
    add_connection_options,
    connection_from,
    error_reason,
    with_connection,
)
from ._format import message_to_dict, refresh_summary, status_lines
from ._rpc import call

__all__ = ["CLIENT_COMMANDS", "read_rules_file"]


def status_command(argv: Sequence[str]) -> int:
    parser = command_parser(
        "status",
        "Show the service's refresh status: last success and its age, next refresh, "
        "last refresh stats, failures, interval and backoff, bridge version, hot and "
        "warm rule counts, staleness.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_connection_options(parser)
    return run_command(parser, argv, with_connection(_status))


def _status(options: argparse.Namespace, connection: Connection) -> int:
    status = call(connection, "get_refresh_status", pb.GetRefreshStatusRequest())
    if options.json:
        print_json(message_to_dict(status))
    else:
        now_ms = int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)
        print("\n".join(status_lines(status, connection.target, now_ms=now_ms)))
    return EXIT_OK


def refresh_command(argv: Sequence[str]) -> int:
    parser = command_parser(
        "refresh",
        "Reload warm storage into the hot cache now (RefreshRules); prints one line.",
    )
    parser.add_argument(
        "--family",
        dest="families",
        action="append",
        default=[],
        metavar="FAMILY",
        help="refresh only this family (repeat for several; default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    add_connection_options(parser)
    return run_command(parser, argv, with_connection(_refresh))


def _refresh(options: argparse.Namespace, connection: Connection) -> int:
    if any(not f for f in options.families):
        raise CommandError("--family must not be empty", EXIT_USAGE)
    response = call(
        connection, "refresh_rules", pb.RefreshRulesRequest(family_ids=options.families)
    )
    if options.json:
        print_json(message_to_dict(response))
    else:
        print(refresh_summary(response))
    return EXIT_OK


def install_command(argv: Sequence[str]) -> int:
    parser = command_parser(
        "install",
        "Install the rules of a rules JSON file (see docs/rules-json.md) with "
        "InstallRules. The agent, config id and owner come from the file unless given.",
    )
    parser.add_argument("file", metavar="FILE", help="rules JSON file; - reads stdin")
    parser.add_argument("--agent", metavar="AGENT_ID", help="install for this agent")
    parser.add_argument("--config-id", metavar="ID", help="record this config id")
    parser.add_argument("--owner", metavar="OWNER", help="record this owner")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    add_connection_options(parser)
    return run_command(parser, argv, _install)


def read_rules_file(name: str) -> list[Rule]:
    """The validated rules of a rules JSON file (``-``: stdin); CommandError if unusable."""
    label = "<stdin>" if name == "-" else name
    try:
        raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {label!r}: {error_reason(exc)}") from None
    try:
        return rules_from_json(raw)
    except ValueError as exc:
        raise CommandError(f"{label}: {exc}") from None


def _install(options: argparse.Namespace) -> int:
    # The file is read and validated before anything else: no call for a bad file.
    rules = read_rules_file(options.file)
    connection = connection_from(options, os.environ)
    label = "<stdin>" if options.file == "-" else options.file
    if not rules:
        raise CommandError(f"{label}: holds no rules; nothing to install")
    agent = _one_value(rules, "installed_by", options.agent, label, "--agent")
    config_id = _one_value(rules, "config_id", options.config_id, label, "--config-id")
    owner = _one_value(rules, "owner", options.owner, label, "--owner")
    if not agent:
        raise CommandError(
            f'{label}: no agent: set "agent_id" at the top of the file or pass --agent'
        )
    request = pb.InstallRulesRequest(
        agent_id=agent,
        rules=[rule_to_proto(rule) for rule in rules],
        config_id=config_id,
        owner=owner,
    )
    response = call(connection, "install_rules", request)
    if options.json:
        print_json(message_to_dict(response))
        return EXIT_OK
    layers = ", ".join(
        f"{layer or '(no layer)'}: {count}"
        for layer, count in sorted(response.rules_by_layer.items())
    )
    print(
        f"installed {response.rules_installed} rules for agent {agent!r}"
        + (f" ({layers})" if layers else "")
        + f"; bridge version {response.bridge_version}"
    )
    return EXIT_OK


def _one_value(
    rules: Sequence[Rule], attr: str, override: str | None, label: str, flag: str
) -> str:
    """The value all ``rules`` share for ``attr`` (one InstallRules call carries one)."""
    if override is not None:
        return override
    values: list[str] = sorted({getattr(rule, attr) for rule in rules})
    if len(values) > 1:
        shown = ", ".join(repr(v) for v in values[:5])
        raise CommandError(
            f"{label}: the rules have different {attr} values ({shown}); "
            f"install them separately or pass {flag}"
        )
    return values[0]


def get_command(argv: Sequence[str]) -> int:
    parser = command_parser(
        "get",
        "Print one rule (GetRule: hot cache, then warm storage) as JSON: "
        '{"tier": "hot" | "warm", "rule": {...}}, the rule in the rules JSON format.',
    )
    parser.add_argument("rule_id", metavar="RULE_ID")
    add_connection_options(parser)
    return run_command(parser, argv, with_connection(_get))


def _get(options: argparse.Namespace, connection: Connection) -> int:
    response = call(connection, "get_rule", pb.GetRuleRequest(rule_id=options.rule_id))
    if not response.found or response.rule is None:
        raise CommandError(f"NOT_FOUND: no rule {options.rule_id!r}")
    try:
        rule = rule_from_proto(response.rule)
    except ValueError as exc:
        raise CommandError(f"the service answered with an invalid rule: {exc}") from None
    print(
        "{\n"
        f"  {json.dumps('tier')}: {json.dumps(response.tier)},\n"
        f"  {json.dumps('rule')}: {rule_json_text(rule, level=1)}\n"
        "}"
    )
    return EXIT_OK


def remove_policy_command(argv: Sequence[str]) -> int:
    parser = command_parser("remove-policy", "Remove one rule of an agent (RemovePolicy).")
    parser.add_argument("agent", metavar="AGENT")
    parser.add_argument("policy", metavar="POLICY", help="the rule_id")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    add_connection_options(parser)
    return run_command(parser, argv, with_connection(_remove_policy))


def _remove_policy(options: argparse.Namespace, connection: Connection) -> int:
    request = pb.RemovePolicyRequest(agent_id=options.agent, policy_id=options.policy)
    response = call(connection, "remove_policy", request)
    if options.json:
        print_json(message_to_dict(response))
    else:
        print(f"removed rule {options.policy!r} of agent {options.agent!r}")
    return EXIT_OK


def remove_agent_command(argv: Sequence[str]) -> int:
    parser = command_parser(
        "remove-agent", "Remove every rule scoped to or installed by an agent (RemoveAgentRules)."
    )
    parser.add_argument("agent", metavar="AGENT")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    add_connection_options(parser)
    return run_command(parser, argv, with_connection(_remove_agent))


def _remove_agent(options: argparse.Namespace, connection: Connection) -> int:
    response = call(
        connection, "remove_agent_rules", pb.RemoveAgentRulesRequest(agent_id=options.agent)
    )
    if options.json:
        print_json(message_to_dict(response))
    else:
        print(f"removed {response.rules_removed} rules of agent {options.agent!r}")
    return EXIT_OK


#: The online subcommands, for the dispatch table of ``guardrefresh``.
CLIENT_COMMANDS: Mapping[str, Callable[[Sequence[str]], int]] = {
    "status": status_command,
    "refresh": refresh_command,
    "install": install_command,
    "get": get_command,
    "remove-policy": remove_policy_command,
    "remove-agent": remove_agent_command,
}
