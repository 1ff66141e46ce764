"""``guardrefresh sessions`` and ``guardrefresh session ID``: the recorded Enforce decisions.

``sessions`` pages through ``QueryTelemetry`` (newest first) and prints a table: time,
tenant, agent, decision, the deciding rule, rules evaluated, total milliseconds.
``session`` prints one ``GetSession`` document with its evidence table. Both take the
connection options of the other client commands and ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..proto import rule_installation as pb
from ._command import EXIT_OK, EXIT_USAGE, CommandError, CommandParser, run_command
from ._connection import Connection, add_connection_options, connection_from
from ._format import message_to_dict
from ._rpc import call

__all__ = ["SESSION_COMMANDS", "format_session", "parse_time", "sessions_table"]

_DECISIONS = ("allow", "deny", "modify", "step_up", "defer")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_time(text: str, *, now_ms: int) -> int:
    """A point in time as epoch milliseconds, from ``text``:

    ``90s``, ``15m``, ``1h``, ``2d``, ``1w`` (that long ago; combinations like ``1h30m``
    too), an ISO 8601 date or time (``2026-12-04``, ``2026-12-04T10:00:00Z``; UTC unless
    it says otherwise), or epoch milliseconds. Raises :class:`ValueError`.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    parts = _RELATIVE.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        return now_ms - round(seconds * 1000)
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use e.g. 30m, 1h, 2d, 2026-12-04T10:00:00Z or epoch ms)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return round(when.timestamp() * 1000)


def _time_text(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def _decision_text(summary: Any) -> str:
    return summary.decision_name or ("ALLOW" if summary.final_decision == 1 else "BLOCK")


def sessions_table(response: Any, *, offset: int) -> list[str]:
    """The human table of a ``QueryTelemetryResponse``, with a line saying which page it is."""
    rows = [
        (
            _time_text(s.timestamp_ms),
            s.tenant_id or "-",
            s.agent_id or "-",
            _decision_text(s),
            s.deciding_rule_id or "-",
            str(s.rules_evaluated_count),
            f"{s.duration_us / 1000:.3f}",
        )
        for s in response.sessions
    ]
    header = ("TIME (UTC)", "TENANT", "AGENT", "DECISION", "DECIDING RULE", "RULES", "TOTAL MS")
    lines = _table(header, rows) if rows else []
    total = response.total_count
    if rows:
        lines.append(f"sessions {offset + 1}-{offset + len(rows)} of {total}, newest first")
    else:
        lines.append(f"no sessions on this page ({total} match)")
    return lines


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_session(document: Mapping[str, Any]) -> list[str]:
    """One session (a ``GetSession`` document) for people: facts, then the evidence table."""
    perf = document.get("performance") or {}
    decision = document.get("decision_name") or (
        "ALLOW" if document.get("final_decision") == 1 else "BLOCK"
    )
    drift = document.get("drift_score")
    facts = [
        ("session", document.get("session_id", "")),
        ("time", _time_text(int(document.get("timestamp_ms", 0))) + " UTC"),
        ("tenant", document.get("tenant_id") or "-"),
        ("agent", document.get("agent_id") or "-"),
        ("layer", document.get("layer") or "-"),
        ("decision", f"{decision} (final_decision {document.get('final_decision')})"),
        ("deciding rule", document.get("deciding_rule_id") or "-"),
        (
            "drift",
            f"score {_number(drift)}, triggered: {'yes' if document.get('drift_triggered') else 'no'}",
        ),
        ("modified params", document.get("modified_params") or "-"),
        (
            "durations (us)",
            f"encode {perf.get('encoding_duration_us', 0)}, rule query "
            f"{perf.get('rule_query_duration_us', 0)}, evaluation "
            f"{perf.get('evaluation_duration_us', 0)}, total "
            f"{perf.get('total_duration_us', document.get('duration_us', 0))}",
        ),
        ("error", document.get("error") or "-"),
        (
            "intent",
            f"{len(str(document.get('intent_json', '')))} characters"
            + (", truncated at 16 KiB" if document.get("intent_truncated") else ""),
        ),
    ]
    width = max(len(name) for name, _ in facts) + 1
    lines = [f"{name + ':':<{width}} {value}" for name, value in facts]
    rules = document.get("rules_evaluated") or []
    lines.append("")
    if not rules:
        lines.append("no rules evaluated")
        return lines
    rows = []
    for rule in rules:
        sims = rule.get("slice_similarities") or []
        thresholds = rule.get("thresholds") or []
        rows.append(
            (
                str(rule.get("rule_id", "")),
                str(rule.get("rule_name") or rule.get("description") or "-"),
                "match" if rule.get("decision") == 1 else "no match",
                " ".join(_number(v) for v in sims) or "-",
                " ".join(_number(v) for v in thresholds) or "-",
                str(rule.get("scoring_mode") or "-"),
                str(rule.get("triggering_slice") or "-"),
            )
        )
    header = ("RULE", "NAME", "RESULT", "SIMILARITIES", "THRESHOLDS", "MODE", "SLICE")
    lines += _table(header, rows)
    return lines


def _now_ms() -> int:
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def sessions_command(argv: Sequence[str]) -> int:
    parser = CommandParser(
        prog="guardrefresh sessions",
        description="List recorded Enforce decisions (QueryTelemetry), newest first.",
        epilog="Times: 30m, 1h, 2d (ago), 2026-12-04T10:00:00Z, or epoch ms. "
        "Exit codes: 0 done, 1 the call failed, 2 bad command line.",
    )
    parser.add_argument("--tenant", metavar="TENANT", help="only this tenant's sessions")
    parser.add_argument("--agent", metavar="AGENT", help="only this agent's sessions")
    parser.add_argument(
        "--decision", type=str.lower, choices=_DECISIONS, help="only sessions with this decision"
    )
    parser.add_argument("--layer", metavar="LAYER", help="only sessions of this layer")
    parser.add_argument("--since", metavar="TIME", help="only sessions at or after TIME")
    parser.add_argument("--until", metavar="TIME", help="only sessions at or before TIME")
    parser.add_argument(
        "--limit",
        type=_non_negative,
        default=50,
        metavar="N",
        help="page size (default 50, max 500)",
    )
    parser.add_argument(
        "--offset", type=_non_negative, default=0, metavar="N", help="skip the N newest matches"
    )
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    add_connection_options(parser)
    return run_command(parser, argv, _with_connection(_sessions))


def _with_connection(
    action: Callable[[argparse.Namespace, Connection], int],
) -> Callable[[argparse.Namespace], int]:
    def run(options: argparse.Namespace) -> int:
        return action(options, connection_from(options, os.environ))

    return run


def _sessions(options: argparse.Namespace, connection: Connection) -> int:
    now = _now_ms()
    try:
        since = None if options.since is None else parse_time(options.since, now_ms=now)
        until = None if options.until is None else parse_time(options.until, now_ms=now)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if since is not None and until is not None and until < since:
        raise CommandError("--until is before --since", EXIT_USAGE)
    request = pb.QueryTelemetryRequest(
        tenant_id=options.tenant,
        agent_id=options.agent,
        layer=options.layer,
        decision_name=None if options.decision is None else options.decision.upper(),
        start_time_ms=since,
        end_time_ms=until,
        limit=options.limit,
        offset=options.offset,
    )
    response = call(connection, "query_telemetry", request)
    if options.json:
        print(json.dumps(message_to_dict(response), indent=2, ensure_ascii=False))
    else:
        print("\n".join(sessions_table(response, offset=options.offset)))
    return EXIT_OK


def session_command(argv: Sequence[str]) -> int:
    parser = CommandParser(
        prog="guardrefresh session",
        description="Show one recorded Enforce decision (GetSession) with its evidence.",
        epilog="Exit codes: 0 done, 1 the call failed (NOT_FOUND: no such session), "
        "2 bad command line.",
    )
    parser.add_argument("session_id", metavar="ID", help="the session id (Enforce's request_id)")
    parser.add_argument("--json", action="store_true", help="print the session JSON document")
    add_connection_options(parser)
    return run_command(parser, argv, _with_connection(_session))


def _session(options: argparse.Namespace, connection: Connection) -> int:
    response = call(connection, "get_session", pb.GetSessionRequest(session_id=options.session_id))
    try:
        document = json.loads(response.session_json)
    except ValueError as exc:
        raise CommandError(f"the service answered with a session that is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CommandError("the service answered with a session that is not a JSON object")
    if options.json:
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print("\n".join(format_session(document)))
    return EXIT_OK


#: The telemetry subcommands, for the dispatch table of ``guardrefresh``.
SESSION_COMMANDS: Mapping[str, Callable[[Sequence[str]], int]] = {
    "sessions": sessions_command,
    "session": session_command,
}
