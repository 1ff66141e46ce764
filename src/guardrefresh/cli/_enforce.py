"""``guardrefresh enforce``: ask a running service for a decision, as an operator checking a policy.

The intent comes from a file (``--intent``: an IntentEvent JSON object; the service has
the management plane encode it) or is made up around a vector (``--vector-file``: 128
numbers, sent as the request's ``intent_vector``). ``--tenant`` and ``--layer`` set the
intent's ``tenantId`` and ``layer`` either way. The command prints the decision and one
row per evaluated rule; it exits 0 whatever the decision (1 when the call fails).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..enforce import INTENT_DIM, IntentError, parse_intent
from ..proto import rule_installation as pb
from ._command import EXIT_OK, EXIT_USAGE, CommandError, CommandParser, print_json, run_command
from ._connection import Connection, add_connection_options, error_reason, with_connection
from ._format import message_to_dict
from ._rpc import call

__all__ = ["enforce_command", "evidence_lines", "vector_from_text"]

_SLOTS = ("action", "resource", "data", "risk")


def enforce_command(argv: Sequence[str]) -> int:
    parser = CommandParser(
        prog="guardrefresh enforce",
        description="Ask the service for an Enforce decision and show the evidence: one row "
        "per evaluated rule with its per-slot similarities and thresholds. Exits 0 whatever "
        "the decision.",
        epilog="Exit codes: 0 decided, 1 the call failed, 2 bad command line.",
    )
    parser.add_argument("--tenant", required=True, metavar="TENANT", help="the intent's tenantId")
    parser.add_argument("--layer", metavar="LAYER", help="the intent's layer (default: none)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--vector-file",
        metavar="FILE",
        help=f'{INTENT_DIM} numbers (a JSON array, or {{"vector": [...]}}) sent as '
        "intent_vector; - reads stdin",
    )
    source.add_argument(
        "--intent",
        metavar="FILE",
        help="an IntentEvent JSON object; the service has the management plane encode it; "
        "- reads stdin",
    )
    parser.add_argument(
        "--drift", type=float, default=0.0, metavar="X", help="drift_score (default: 0)"
    )
    parser.add_argument("--request-id", metavar="ID", help="request_id (default: a new UUID)")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    add_connection_options(parser)
    return run_command(parser, argv, with_connection(_enforce))


def _read(name: str, what: str) -> str:
    label = "<stdin>" if name == "-" else name
    try:
        raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        return raw.decode("utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {what} {label!r}: {error_reason(exc)}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{what} {label!r} is not UTF-8 text") from None


def vector_from_text(text: str, label: str) -> list[float]:
    """128 finite numbers from a JSON array or ``{"vector": [...]}``; CommandError if not."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{label}: not JSON: {exc}") from None
    values = document.get("vector") if isinstance(document, dict) else document
    if not isinstance(values, list):
        raise CommandError(f'{label}: expected a JSON array of numbers or {{"vector": [...]}}')
    if len(values) != INTENT_DIM:
        raise CommandError(f"{label}: {len(values)} numbers; expected {INTENT_DIM}")
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandError(f"{label}: value {index} is not a number")
        if not math.isfinite(value):
            raise CommandError(f"{label}: value {index} is not finite")
    return [float(v) for v in values]


def _intent_json(options: argparse.Namespace) -> str:
    if options.intent is not None:
        label = "<stdin>" if options.intent == "-" else options.intent
        try:
            document = json.loads(_read(options.intent, "--intent"))
        except ValueError as exc:
            raise CommandError(f"{label}: not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise CommandError(f"{label}: an IntentEvent must be a JSON object")
    else:
        label = "the intent made for --vector-file"
        # The fields the IntentEvent schema requires; the vector says everything else.
        document = {
            "id": f"cli-{uuid.uuid4()}",
            "schemaVersion": "v1.3",
            "timestamp": time.time(),
            "actor": {"id": "guardrefresh-cli", "type": "user"},
            "action": "",
            "resource": {"type": ""},
            "data": {"sensitivity": []},
            "risk": {"authn": "none"},
        }
    document["tenantId"] = options.tenant
    if options.layer is not None:
        document["layer"] = options.layer
    text = json.dumps(document, ensure_ascii=False)
    try:
        parse_intent(text)  # the service would refuse it: say so before calling
    except IntentError as exc:
        raise CommandError(f"{label}: {exc}") from None
    return text


def _enforce(options: argparse.Namespace, connection: Connection) -> int:
    if not math.isfinite(options.drift):
        raise CommandError("--drift must be a finite number", EXIT_USAGE)
    vector: list[float] = []
    if options.vector_file is not None:
        label = "<stdin>" if options.vector_file == "-" else options.vector_file
        vector = vector_from_text(_read(options.vector_file, "--vector-file"), label)
    request = pb.EnforceRequest(
        intent_event_json=_intent_json(options),
        intent_vector=vector,
        request_id=options.request_id or "",
        drift_score=options.drift,
    )
    response = call(connection, "enforce", request)
    if options.json:
        print_json(message_to_dict(response))
    else:
        print("\n".join(evidence_lines(response, tenant=options.tenant, layer=options.layer)))
    return EXIT_OK


def _sims(values: Sequence[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values) if values else "-"


def evidence_lines(response: Any, *, tenant: str, layer: str | None) -> list[str]:
    """The human report of an ``EnforceResponse``: a summary, then the evidence table."""
    where = f"tenant {tenant!r}" + (f", layer {layer!r}" if layer else ", every layer")
    lines = [
        f"{response.decision_name or ('ALLOW' if response.decision else 'DENY')} "
        f"(decision {response.decision}) for {where}; request {response.request_id}",
        f"rules evaluated: {response.rules_evaluated}; drift triggered: "
        f"{'yes' if response.drift_triggered else 'no'}",
        "slice similarities (" + "/".join(_SLOTS) + "): " + _sims(response.slice_similarities),
    ]
    if response.modified_params:
        lines.append(f"modified params: {response.modified_params}")
    if not response.evidence:
        lines.append("no evidence: no rule was evaluated")
        return lines
    header = ("#", "rule", "name", "match", *_SLOTS, "thresholds", "mode", "slice", "anchor")
    rows = [
        (
            str(index),
            e.rule_id,
            e.rule_name or "-",
            "yes" if e.decision else "no",
            *(f"{s:.3f}" for s in (list(e.similarities) + [0.0] * 4)[:4]),
            "/".join(f"{t:.2f}" for t in e.thresholds) or "-",
            e.scoring_mode or "-",
            e.triggering_slice or "-",
            str(e.anchor_matched) or "-",
        )
        for index, e in enumerate(response.evidence, start=1)
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines.append("")
    for row in [header, *rows]:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return lines
