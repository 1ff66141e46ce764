"""A session's JSON: each evaluated rule as ``GetSession`` serves it, and the compact
form the database keeps (each rule a row, :data:`STORED_RULE_FIELDS`), turned back
into exactly the served document by :func:`expand_stored_json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, Protocol

import orjson

from ._decisions import BLOCK, PASS

__all__ = [
    "COMPACT_MARKER",
    "STORED_RULE_FIELDS",
    "EvidenceLike",
    "dumps",
    "expand_stored_json",
    "rule_document",
    "stored_rule",
]


class EvidenceLike(Protocol):
    """What a session reads from one rule's evidence (the engine's ``RuleEvidence``)."""

    @property
    def rule_id(self) -> str: ...
    @property
    def rule_name(self) -> str: ...
    @property
    def decision(self) -> int: ...
    @property
    def similarities(self) -> Sequence[float]: ...
    @property
    def triggering_slice(self) -> str: ...
    @property
    def anchor_matched(self) -> object: ...
    @property
    def thresholds(self) -> Sequence[float]: ...
    @property
    def scoring_mode(self) -> str: ...


def rule_document(evidence: EvidenceLike) -> dict[str, Any]:
    """One evaluated rule in the session JSON, straight from the engine's evidence
    (the same as ``RuleEvaluation.from_evidence(evidence).to_document()``, without the
    intermediate object: the writer builds one per evaluated rule of every session)."""
    matched = evidence.anchor_matched
    return {
        # The original's RuleEvaluationEvent fields (values it has no source for here
        # are neutral: family, priority, per-rule timings and anchor counts).
        "rule_id": evidence.rule_id,
        "rule_family": "",
        "priority": 0,
        "description": evidence.rule_name or None,
        "started_at_us": 0,
        "duration_us": 0,
        "decision": PASS if evidence.decision == PASS else BLOCK,
        "slice_similarities": list(map(float, evidence.similarities)),
        "thresholds": list(map(float, evidence.thresholds)),
        "anchor_counts": [0, 0, 0, 0],
        "short_circuited": False,
        # Derivable from the similarities and thresholds (the CLI derives "passed");
        # left empty, as the original does without detail tracking, to keep 1M
        # sessions compact.
        "slice_details": [],
        # Additions.
        "rule_name": evidence.rule_name,
        "scoring_mode": evidence.scoring_mode,
        "triggering_slice": evidence.triggering_slice,
        "anchor_matched": matched if isinstance(matched, str) else ("true" if matched else ""),
    }


#: The fields of one evaluated rule in :meth:`EnforcementSession.to_stored_json`, in order.
STORED_RULE_FIELDS: Final = (
    "rule_id", "rule_name", "decision", "similarities", "triggering_slice",
    "anchor_matched", "thresholds", "scoring_mode",
)  # fmt: skip
COMPACT_MARKER: Final = "_rules_as_rows"


class _StoredRule(NamedTuple):
    rule_id: str
    rule_name: str
    decision: int
    similarities: Sequence[float]
    triggering_slice: str
    anchor_matched: object
    thresholds: Sequence[float]
    scoring_mode: str


def stored_rule(e: EvidenceLike) -> list[Any]:
    matched = e.anchor_matched
    return [
        e.rule_id,
        e.rule_name,
        PASS if e.decision == PASS else BLOCK,
        list(map(float, e.similarities)),
        e.triggering_slice,
        matched if isinstance(matched, str) else ("true" if matched else ""),
        list(map(float, e.thresholds)),
        e.scoring_mode,
    ]


def expand_stored_json(text: str) -> str:
    """The session JSON ``GetSession`` serves, from what the database keeps (either
    form: :meth:`EnforcementSession.to_stored_json`, or a full document as earlier
    versions stored it, returned as is)."""
    if COMPACT_MARKER not in text:
        return text
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:  # written by the standard library's fallback
        document = json.loads(text)
    if not isinstance(document, dict) or document.pop(COMPACT_MARKER, None) != 1:
        return text
    document["rules_evaluated"] = [
        rule_document(_StoredRule(*row)) for row in document.get("rules_evaluated", ())
    ]
    return dumps(document)


def dumps(document: dict[str, Any]) -> str:
    try:
        return orjson.dumps(document).decode()
    except orjson.JSONEncodeError:
        # What orjson refuses and the standard library escapes (a lone surrogate).
        return json.dumps(_finite(document), separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
