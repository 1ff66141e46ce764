"""Subcommands that talk to a running guardrefresh: status, refresh, install, get, removals.

Each one makes a single unary call with the project's generated grpclib client
(``DataPlaneStub``) on a fresh asyncio loop: the command is a short-lived process, so it
needs no Trio. The channel is closed before the command returns.

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
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs

from ..model import Rule, rule_from_proto, rule_json_text, rule_to_proto, rules_from_json
from ..proto import rule_installation as pb

__all__ = [
    "CLIENT_COMMANDS",
    "DEFAULT_TARGET",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "TARGET_ENV",
    "CommandError",
    "CommandParser",
    "Connection",
    "call",
    "connection_from",
    "human_duration",
    "message_to_dict",
    "parse_target",
    "read_rules_file",
    "run_command",
    "status_lines",
    "utc_text",
]

DEFAULT_TARGET = "127.0.0.1:50051"
#: Environment variable read when ``--target`` is not given.
TARGET_ENV = "GUARDREFRESH_TARGET"
DEFAULT_TIMEOUT_S = 10.0
#: How long a command waits for its connection to close before it exits anyway.
_CLOSE_WAIT_S = 2.0

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


# ------------------------------------------------------------------- connection ---


@attrs.frozen
class Connection:
    """Where and how to call the service, resolved from the common options."""

    host: str
    port: int
    timeout: float
    token: str | None = attrs.field(default=None, repr=False)  # a secret
    tls: ssl.SSLContext | None = None
    server_name: str | None = None
    #: A client certificate is offered (mutual TLS).
    client_cert: bool = False

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def metadata(self) -> dict[str, str] | None:
        return None if self.token is None else {"authorization": f"Bearer {self.token}"}


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"the service's gRPC address (default: ${TARGET_ENV}, else {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help=f"deadline of the call, connecting included (default: {DEFAULT_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--token-file",
        metavar="PATH",
        type=Path,
        help="send the token in PATH as 'authorization: Bearer <token>' metadata",
    )
    group.add_argument(
        "--tls-ca",
        metavar="PATH",
        type=Path,
        help="use TLS and verify the server's certificate against this PEM CA bundle",
    )
    group.add_argument(
        "--tls-cert",
        metavar="PATH",
        type=Path,
        help="client certificate chain (PEM) for mutual TLS; implies TLS",
    )
    group.add_argument(
        "--tls-key",
        metavar="PATH",
        type=Path,
        help="private key (PEM) of --tls-cert, when the certificate file does not hold it",
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name to verify the server's certificate against (default: HOST)",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); CommandError (usage) if not."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(
            f"bad target {text!r}: expected HOST:PORT, e.g. {DEFAULT_TARGET}", EXIT_USAGE
        )
    return host, int(port)


def connection_from(options: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
    """Resolve the connection options (reads the token and TLS files)."""
    host, port = parse_target(options.target or environ.get(TARGET_ENV) or DEFAULT_TARGET)
    return Connection(
        host=host,
        port=port,
        timeout=options.timeout,
        token=None if options.token_file is None else _read_token(options.token_file),
        tls=_ssl_context(options),
        server_name=options.tls_server_name,
        client_cert=options.tls_cert is not None,
    )


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read --token-file {str(path)!r}: {_reason(exc)}") from None
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise CommandError(
            f"--token-file {str(path)!r} must hold one token of printable ASCII characters"
        )
    return token


def _ssl_context(options: argparse.Namespace) -> ssl.SSLContext | None:
    if options.tls_key is not None and options.tls_cert is None:
        raise CommandError("--tls-key needs --tls-cert", EXIT_USAGE)
    if options.tls_ca is None and options.tls_cert is None:
        if options.tls_server_name is not None:
            raise CommandError("--tls-server-name needs TLS (--tls-ca or --tls-cert)", EXIT_USAGE)
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # gRPC over TLS is HTTP/2 negotiated by ALPN.
    context.set_alpn_protocols(["h2"])
    if options.tls_ca is not None:
        try:
            context.load_verify_locations(cafile=options.tls_ca)
        except (OSError, ValueError) as exc:
            raise CommandError(
                f"cannot load --tls-ca {str(options.tls_ca)!r}: {_reason(exc)}"
            ) from None
    if options.tls_cert is not None:
        try:
            context.load_cert_chain(options.tls_cert, options.tls_key)
        except (OSError, ValueError) as exc:
            files = f"{str(options.tls_cert)!r}" + (
                f" / {str(options.tls_key)!r}" if options.tls_key else ""
            )
            raise CommandError(f"cannot load --tls-cert {files}: {_reason(exc)}") from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def call(connection: Connection, method: str, request: Any) -> Any:
    """Make one unary DataPlane call (``method`` is the stub's method name).

    Returns the response message. Every failure (a gRPC status from the server,
    refused or reset connections, the deadline, TLS) becomes a :class:`CommandError`
    with one line that names the status or the target.
    """
    # Imported here: ``guardrefresh --help`` and the service itself need no client.
    from grpclib.client import Channel
    from grpclib.config import Configuration
    from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

    async def one_call() -> Any:
        channel = Channel(
            connection.host,
            connection.port,
            ssl=connection.tls,
            config=Configuration(ssl_target_name_override=connection.server_name),
        )
        try:
            stub = pb.DataPlaneStub(
                channel, timeout=connection.timeout, metadata=connection.metadata
            )
            return await getattr(stub, method)(request)
        finally:
            await _close(channel)

    target = connection.target
    try:
        # A plain asyncio loop, whatever the policy says (trio-asyncio replaces it when
        # imported, as it is in a process that also hosts the service).
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(one_call())
    except GRPCError as exc:
        text = exc.status.name + (f": {exc.message}" if exc.message else "")
        raise CommandError(text) from None
    except TimeoutError:
        raise CommandError(
            f"no answer from {target} within {connection.timeout:g}s (see --timeout)"
        ) from None
    except ssl.SSLError as exc:
        raise CommandError(f"TLS with {target} failed: {_reason(exc)}") from None
    except ConnectionRefusedError:
        raise CommandError(
            f"cannot connect to {target}: connection refused (is guardrefresh running there?)"
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot connect to {target}: {_reason(exc)}") from None
    except (StreamTerminatedError, ProtocolError) as exc:
        # The usual causes when the server hangs up without a gRPC status.
        if connection.tls is None:
            hint = " (not a gRPC server, or one that needs TLS: see --tls-ca)"
        elif not connection.client_cert:
            hint = " (a server that requires a client certificate drops others: see --tls-cert)"
        else:
            hint = ""
        raise CommandError(f"gRPC connection to {target} failed: {exc}{hint}") from None


async def _close(channel: Any) -> None:
    """Close a grpclib channel and wait (bounded) until its socket is really closed.

    ``Channel.close()`` only starts closing. Over TLS the socket closes after the
    close_notify exchange, some loop iterations later; were ``asyncio.run`` to return
    first, the socket would be left open (a ResourceWarning, a peer left waiting).
    asyncio calls the protocol's ``connection_lost`` just before it closes the socket,
    so that is the signal. ``_protocol`` is private, but grpclib is pinned exactly.
    """
    protocol = getattr(channel, "_protocol", None)
    if protocol is None or protocol.handler.connection_lost:  # never connected, or gone
        channel.close()
        await asyncio.sleep(0)
        return
    lost = asyncio.Event()
    connection_lost = protocol.connection_lost

    def notify(exc: BaseException | None) -> None:
        try:
            connection_lost(exc)
        finally:
            lost.set()

    protocol.connection_lost = notify
    channel.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_CLOSE_WAIT_S):
            await lost.wait()
    # One more turn: the socket is closed right after connection_lost returns.
    await asyncio.sleep(0)


# ---------------------------------------------------------------------- output ---


def message_to_dict(message: Any) -> dict[str, Any]:
    """A generated message as plain JSON-ready data, with the proto's field names.

    Unlike the protobuf JSON mapping, 64-bit integers stay numbers and every field
    is present (an unset sub-message is ``null``).
    """
    return {f.name: _plain(getattr(message, f.name)) for f in dataclasses.fields(message)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return message_to_dict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def utc_text(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def human_duration(seconds: float) -> str:
    """``0.25s``, ``42s``, ``3m 12s``, ``5h 56m``, ``2d 3h``."""
    if seconds < 10:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            rest = (whole % size) // sub_size
            return f"{whole // size}{unit}" + (f" {rest}{sub}" if rest else "")
    if whole >= 60:
        return f"{whole // 60}m" + (f" {whole % 60}s" if whole % 60 else "")
    return f"{whole}s"


def _families(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "all"


def _refresh_summary(stats: Any) -> str:
    """One line about a refresh (``RefreshRulesResponse`` or ``RefreshStatsMessage``)."""
    where = f"families: {_families(stats.family_ids)}"
    if stats.unchanged:
        return (
            f"unchanged: the hot cache already matches warm storage ({stats.rules_refreshed} "
            f"rules, {where}); bridge version {stats.bridge_version}, {stats.duration_ms} ms"
        )
    return (
        f"refreshed {stats.rules_refreshed} rules ({where}) in {stats.duration_ms} ms: "
        f"{stats.rules_added} added, {stats.rules_removed} removed, "
        f"{stats.rules_changed} changed; bridge version {stats.bridge_version}"
    )


def status_lines(status: Any, target: str, *, now_ms: int) -> list[str]:
    """The human table of a ``GetRefreshStatusResponse``."""
    if status.last_success_ms:
        last = f"{utc_text(status.last_success_ms)} ({human_duration(status.last_success_age_ms / 1000)} ago)"
    else:
        last = "never"
    if not status.next_refresh_ms:
        next_due = "none scheduled"
    elif status.next_refresh_ms <= now_ms:
        next_due = f"{utc_text(status.next_refresh_ms)} (due now)"
    else:
        wait = human_duration((status.next_refresh_ms - now_ms) / 1000)
        next_due = f"{utc_text(status.next_refresh_ms)} (in {wait})"
    stats = status.last_stats
    last_stats = "-" if stats is None else f"{_refresh_summary(stats)}; trigger {stats.trigger}"
    scheduler = ("enabled" if status.scheduler_enabled else "disabled") + (
        ", running" if status.scheduler_running else ", not running"
    )
    backoff = human_duration(status.backoff_s) if status.backoff_s else "none"
    stale = "YES" if status.stale else "no"
    rows = [
        ("last success", last),
        ("next refresh", next_due),
        ("last refresh", last_stats),
        ("consecutive failures", str(status.consecutive_failures)),
        ("last error", status.last_error or "-"),
        ("interval", f"{human_duration(status.current_interval_s)} (backoff: {backoff})"),
        ("scheduler", scheduler),
        ("bridge version", str(status.bridge_version)),
        ("hot rules", f"{status.hot_rules} of capacity {status.hot_capacity}"),
        ("warm rules", str(status.warm_rules)),
        ("stale", f"{stale} (limit {human_duration(status.max_staleness_s)})"),
    ]
    fleet = getattr(status, "replication", None)
    if fleet is not None:
        rows += _replication_rows(fleet)
    width = max(len(name) for name, _ in rows) + 1
    return [f"guardrefresh at {target}"] + [f"  {name + ':':<{width}} {v}" for name, v in rows]


def _replication_rows(fleet: Any) -> list[tuple[str, str]]:
    """Rows of a fleet replica's ``ReplicationStatus``."""
    state = "connected" if fleet.connected else "DISCONNECTED"
    if not fleet.synced:
        state += ", not yet synced (health NOT_SERVING)"
    limit = f"limit {human_duration(fleet.max_lag_s)}" if fleet.max_lag_s else "no limit"
    lag = f"{human_duration(fleet.lag_s)}, {fleet.versions_behind} versions behind ({limit})"
    if fleet.lagging:
        lag += ": LAGGING"
    synced = utc_text(fleet.last_synced_ms) if fleet.last_synced_ms else "never"
    return [
        ("fleet database", fleet.engine),
        ("replication", state),
        ("fleet version", f"{fleet.fleet_version} (local {fleet.local_version})"),
        ("replication lag", lag),
        ("last in sync", synced),
        ("resyncs", f"{fleet.resyncs} (tombstone horizon {fleet.horizon})"),
        ("replication error", fleet.last_error or "-"),
    ]


# -------------------------------------------------------------------- commands ---


def _parser(name: str, description: str) -> CommandParser:
    parser = CommandParser(
        prog=f"guardrefresh {name}",
        description=description,
        epilog="Exit codes: 0 done, 1 the call failed, 2 bad command line.",
    )
    return parser


def _with_connection(
    action: Callable[[argparse.Namespace, Connection], int],
) -> Callable[[argparse.Namespace], int]:
    def run(options: argparse.Namespace) -> int:
        return action(options, connection_from(options, os.environ))

    return run


def status_command(argv: Sequence[str]) -> int:
    parser = _parser(
        "status",
        "Show the service's refresh status: last success and its age, next refresh, "
        "last refresh stats, failures, interval and backoff, bridge version, hot and "
        "warm rule counts, staleness.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    _add_connection_options(parser)
    return run_command(parser, argv, _with_connection(_status))


def _status(options: argparse.Namespace, connection: Connection) -> int:
    status = call(connection, "get_refresh_status", pb.GetRefreshStatusRequest())
    if options.json:
        _print_json(message_to_dict(status))
    else:
        now_ms = int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)
        print("\n".join(status_lines(status, connection.target, now_ms=now_ms)))
    return EXIT_OK


def refresh_command(argv: Sequence[str]) -> int:
    parser = _parser(
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
    _add_connection_options(parser)
    return run_command(parser, argv, _with_connection(_refresh))


def _refresh(options: argparse.Namespace, connection: Connection) -> int:
    if any(not f for f in options.families):
        raise CommandError("--family must not be empty", EXIT_USAGE)
    response = call(
        connection, "refresh_rules", pb.RefreshRulesRequest(family_ids=options.families)
    )
    if options.json:
        _print_json(message_to_dict(response))
    else:
        print(_refresh_summary(response))
    return EXIT_OK


def install_command(argv: Sequence[str]) -> int:
    parser = _parser(
        "install",
        "Install the rules of a rules JSON file (see docs/rules-json.md) with "
        "InstallRules. The agent, config id and owner come from the file unless given.",
    )
    parser.add_argument("file", metavar="FILE", help="rules JSON file; - reads stdin")
    parser.add_argument("--agent", metavar="AGENT_ID", help="install for this agent")
    parser.add_argument("--config-id", metavar="ID", help="record this config id")
    parser.add_argument("--owner", metavar="OWNER", help="record this owner")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    _add_connection_options(parser)
    return run_command(parser, argv, _install)


def read_rules_file(name: str) -> list[Rule]:
    """The validated rules of a rules JSON file (``-``: stdin); CommandError if unusable."""
    label = "<stdin>" if name == "-" else name
    try:
        raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {label!r}: {_reason(exc)}") from None
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
        _print_json(message_to_dict(response))
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
    parser = _parser(
        "get",
        "Print one rule (GetRule: hot cache, then warm storage) as JSON: "
        '{"tier": "hot" | "warm", "rule": {...}}, the rule in the rules JSON format.',
    )
    parser.add_argument("rule_id", metavar="RULE_ID")
    _add_connection_options(parser)
    return run_command(parser, argv, _with_connection(_get))


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
    parser = _parser("remove-policy", "Remove one rule of an agent (RemovePolicy).")
    parser.add_argument("agent", metavar="AGENT")
    parser.add_argument("policy", metavar="POLICY", help="the rule_id")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    _add_connection_options(parser)
    return run_command(parser, argv, _with_connection(_remove_policy))


def _remove_policy(options: argparse.Namespace, connection: Connection) -> int:
    request = pb.RemovePolicyRequest(agent_id=options.agent, policy_id=options.policy)
    response = call(connection, "remove_policy", request)
    if options.json:
        _print_json(message_to_dict(response))
    else:
        print(f"removed rule {options.policy!r} of agent {options.agent!r}")
    return EXIT_OK


def remove_agent_command(argv: Sequence[str]) -> int:
    parser = _parser(
        "remove-agent", "Remove every rule scoped to or installed by an agent (RemoveAgentRules)."
    )
    parser.add_argument("agent", metavar="AGENT")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    _add_connection_options(parser)
    return run_command(parser, argv, _with_connection(_remove_agent))


def _remove_agent(options: argparse.Namespace, connection: Connection) -> int:
    response = call(
        connection, "remove_agent_rules", pb.RemoveAgentRulesRequest(agent_id=options.agent)
    )
    if options.json:
        _print_json(message_to_dict(response))
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
