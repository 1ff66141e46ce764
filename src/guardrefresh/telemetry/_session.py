"""One enforcement session: what an Enforce call decided, on what, and how long it took.

:class:`EnforcementSession` is built on the request path, so construction is cheap (no
parsing, no serialisation); :meth:`EnforcementSession.to_document` turns it into the JSON
document ``GetSession`` serves, in the writer thread. That document carries every field
of the original Guard data plane's ``EnforcementSession`` (tools built for it parse ours)
plus a few additions (``decision_name``, ``drift_score``, ``drift_triggered``,
``modified_params``, ``intent_truncated``, ``deciding_rule_id``, per-rule ``rule_name``,
``triggering_slice``, ``anchor_matched``, ``scoring_mode``).
"""

from __future__ import annotations

import enum
import json
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, Protocol

import attrs
import orjson

from ._intent import cap_intent_json, intent_summary

__all__ = [
    "BLOCK",
    "DECISION_NAMES",
    "PASS",
    "STORED_RULE_FIELDS",
    "Durations",
    "EnforcementResultLike",
    "EnforcementSession",
    "EvidenceLike",
    "RuleEvaluation",
    "decision_name_of",
    "expand_stored_json",
    "legacy_decision",
    "rule_document",
]

#: The final decisions, as the original names them (``Decision::as_str``).
DECISION_NAMES: Final = ("ALLOW", "DENY", "MODIFY", "STEP_UP", "DEFER")
#: The original's 0/1 decision: ``final_decision`` and the per-rule ``decision``.
BLOCK: Final = 0
PASS: Final = 1


def legacy_decision(name: str) -> int:
    """The original's 0/1 decision for a decision name: ALLOW and MODIFY pass, the rest block."""
    return PASS if name in ("ALLOW", "MODIFY") else BLOCK


def decision_name_of(decision: object) -> str:
    """``"DENY"`` from ``"deny"``, ``Decision.DENY`` (an enum) or the legacy ``0``/``1``.

    Anything unrecognised is ``"DENY"``: a session must never claim more than was allowed.
    """
    if isinstance(decision, bool):
        return "ALLOW" if decision else "DENY"
    if isinstance(decision, int) and not isinstance(decision, enum.Enum):
        return "ALLOW" if decision == PASS else "DENY"
    name = getattr(decision, "name", decision)
    if isinstance(name, str):
        upper = name.strip().upper().replace("-", "_")
        if upper in DECISION_NAMES:
            return upper
        value = getattr(decision, "value", None)
        if isinstance(value, str) and value.upper() in DECISION_NAMES:
            return value.upper()
    return "DENY"


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Durations:
    """Where the time of one Enforce call went, in microseconds."""

    encode_us: int = attrs.field(default=0, validator=_non_negative)
    rule_query_us: int = attrs.field(default=0, validator=_non_negative)
    evaluation_us: int = attrs.field(default=0, validator=_non_negative)
    total_us: int = attrs.field(default=0, validator=_non_negative)


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


class EnforcementResultLike(Protocol):
    """What a session reads from the engine's ``EnforcementResult``."""

    @property
    def decision(self) -> object: ...
    @property
    def evidence(self) -> Sequence[EvidenceLike]: ...
    @property
    def slice_similarities(self) -> Sequence[float]: ...
    @property
    def modified_params(self) -> object: ...
    @property
    def drift_triggered(self) -> bool: ...


@attrs.frozen(kw_only=True)
class RuleEvaluation:
    """One evaluated rule: its similarities against its thresholds and what it decided.

    ``decision`` is the original's per-rule 0/1 (1: the rule's anchors matched).
    """

    rule_id: str
    rule_name: str = ""
    decision: int = BLOCK
    similarities: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    thresholds: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    scoring_mode: str = ""
    triggering_slice: str = ""
    anchor_matched: str = ""

    @classmethod
    def from_evidence(cls, evidence: EvidenceLike) -> RuleEvaluation:
        matched = evidence.anchor_matched
        return cls(
            rule_id=evidence.rule_id,
            rule_name=evidence.rule_name,
            decision=PASS if evidence.decision == PASS else BLOCK,
            similarities=evidence.similarities,
            thresholds=evidence.thresholds,
            scoring_mode=evidence.scoring_mode,
            triggering_slice=evidence.triggering_slice,
            anchor_matched=matched if isinstance(matched, str) else ("true" if matched else ""),
        )

    def to_document(self) -> dict[str, Any]:
        return rule_document(self)


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


def _decision_name(_instance: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in DECISION_NAMES:
        raise ValueError(f"decision_name must be one of {DECISION_NAMES}, got {value!r}")


@attrs.frozen(kw_only=True)
class EnforcementSession:
    """The record of one Enforce call (immutable; cheap to build on the request path).

    ``session_id`` is the response's ``request_id``. ``intent_json`` is already capped
    (:func:`cap_intent_json`); use :meth:`from_outcome` to build one from an engine result.
    """

    session_id: str
    timestamp_ms: int
    tenant_id: str = ""
    agent_id: str = ""
    layer: str = ""
    decision_name: str = attrs.field(default="DENY", validator=_decision_name)
    drift_score: float = 0.0
    drift_triggered: bool = False
    #: The modified parameters of a MODIFY decision, as JSON text; "" otherwise.
    modified_params: str = ""
    final_similarities: tuple[float, ...] | None = None
    #: The engine's evidence, one entry per evaluated rule, kept as given (immutable)
    #: and turned into :attr:`rules` only when read, in the writer thread: converting
    #: 100 entries on the request path cost about 200 µs per Enforce call.
    evidence: tuple[EvidenceLike, ...] = ()
    #: How many rules the engine evaluated (may exceed ``len(rules)`` if evidence was cut).
    rules_evaluated: int = 0
    durations: Durations = Durations()
    error: str | None = None
    intent_json: str = ""
    intent_truncated: bool = False
    #: ``tool_name`` or ``action`` of the intent when the caller already knows it.
    intent_summary: str | None = None
    #: The deciding rule as the engine named it ("" for none); None: inferred.
    deciding_rule: str | None = None

    @property
    def rules(self) -> tuple[RuleEvaluation, ...]:
        """The evaluated rules (built from :attr:`evidence` at each access)."""
        return tuple(RuleEvaluation.from_evidence(e) for e in self.evidence)

    @property
    def final_decision(self) -> int:
        """The original's 0 (blocked) / 1 (allowed)."""
        return legacy_decision(self.decision_name)

    @property
    def deciding_rule_id(self) -> str:
        """The rule that decided, as the engine said; else the last evaluated one if it
        matched (the engine stops at the first match that settles the decision), else ``""``.
        """
        if self.deciding_rule is not None:
            return self.deciding_rule
        if self.evidence and self.evidence[-1].decision == PASS:
            return self.evidence[-1].rule_id
        return ""

    @classmethod
    def from_outcome(
        cls,
        *,
        session_id: str,
        intent_json: str,
        tenant_id: str = "",
        agent_id: str = "",
        layer: str = "",
        drift_score: float = 0.0,
        result: EnforcementResultLike | None = None,
        durations: Durations | None = None,
        error: str | None = None,
        intent_summary: str | None = None,
        timestamp_ms: int | None = None,
    ) -> EnforcementSession:
        """A session from one Enforce call's outcome.

        Without a ``result`` (a fail-closed call: bad input, encoder down, no rules) the
        decision is DENY with no rules. An empty ``session_id`` gets a fresh UUID. Cheap:
        no parsing or serialisation happens here.
        """
        text, truncated = cap_intent_json(intent_json)
        common: dict[str, Any] = {
            "session_id": session_id or str(uuid.uuid4()),
            "timestamp_ms": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            "tenant_id": tenant_id,
            "agent_id": agent_id,
            "layer": layer,
            "drift_score": float(drift_score),
            "durations": durations if durations is not None else Durations(),
            "error": error or None,
            "intent_json": text,
            "intent_truncated": truncated,
            "intent_summary": intent_summary,
        }
        if result is None:
            return cls(decision_name="DENY", **common)
        evidence = tuple(result.evidence)
        params = result.modified_params
        if params is None:
            params_text = ""
        elif isinstance(params, str):
            params_text = params
        else:
            params_text = json.dumps(params, separators=(",", ":"), default=str)
        # The engine's own name when it has one (a result may carry both).
        name = getattr(result, "decision_name", None)
        deciding = getattr(result, "deciding_rule", None)
        return cls(
            decision_name=decision_name_of(name if name else result.decision),
            deciding_rule=deciding if isinstance(deciding, str) else None,
            drift_triggered=bool(result.drift_triggered),
            modified_params=params_text,
            final_similarities=_floats(result.slice_similarities),
            evidence=evidence,
            rules_evaluated=len(evidence),
            **common,
        )

    def summary(self) -> str:
        """``intent_summary`` as given, else derived from the intent JSON (parses it)."""
        if self.intent_summary is not None:
            return self.intent_summary
        return intent_summary(self.intent_json)

    def to_document(self, *, rules: bool = True) -> dict[str, Any]:
        """The JSON document ``GetSession`` serves (original field names, plus additions);
        without ``rules``, ``rules_evaluated`` is left empty."""
        d = self.durations
        end_us = self.timestamp_ms * 1000 + d.total_us
        events: list[dict[str, Any]] = []
        if self.error is not None:
            events.append(
                {"type": "error", "timestamp_us": end_us, "error": self.error, "fail_closed": True}
            )
        events.append(
            {
                "type": "final_decision",
                "timestamp_us": end_us,
                "decision": self.final_decision,
                "rules_evaluated": self.rules_evaluated,
                "total_duration_us": d.total_us,
            }
        )
        return {
            "session_id": self.session_id,
            "timestamp_ms": self.timestamp_ms,
            "layer": self.layer,
            "agent_id": self.agent_id or None,
            "tenant_id": self.tenant_id or None,
            "intent_json": self.intent_json,
            "intent_vector": None,
            "events": events,
            "rules_evaluated": [rule_document(e) for e in self.evidence] if rules else [],
            "final_decision": self.final_decision,
            "final_similarities": (
                None if self.final_similarities is None else list(self.final_similarities)
            ),
            "duration_us": d.total_us,
            "performance": {
                "encoding_duration_us": d.encode_us,
                "rule_query_duration_us": d.rule_query_us,
                "evaluation_duration_us": d.evaluation_us,
                "total_duration_us": d.total_us,
                "rules_queried": self.rules_evaluated,
                "rules_evaluated": self.rules_evaluated,
                "short_circuited": False,
            },
            "error": self.error,
            # Additions.
            "decision_name": self.decision_name,
            "drift_score": self.drift_score,
            "drift_triggered": self.drift_triggered,
            "modified_params": self.modified_params,
            "intent_truncated": self.intent_truncated,
            "deciding_rule_id": self.deciding_rule_id,
        }

    def to_json(self) -> str:
        """:meth:`to_document` as compact JSON; NaN and infinities (a refused request's
        drift score) become ``null``, which strict JSON parsers accept.

        orjson, not the standard library: a session over 100 rules holds 800 floats, which
        ``json.dumps`` took ~500 µs to write and orjson ~50 µs, every one of them holding
        the GIL the Enforce path needs.
        """
        return _dumps(self.to_document())

    def to_stored_json(self) -> str:
        """What the database keeps: :meth:`to_json` with each evaluated rule as a row
        (:data:`STORED_RULE_FIELDS`) instead of an object of 18 fields, most of them
        constant. :func:`expand_stored_json` turns it back into exactly :meth:`to_json`.

        Less than half the bytes at 100 rules (48 KB → about 20 KB), and no per-rule
        dictionaries to build: the writer's CPU and disk traffic per session follow.
        """
        document = self.to_document(rules=False)
        document["rules_evaluated"] = [_stored_rule(e) for e in self.evidence]
        document[_COMPACT_MARKER] = 1
        return _dumps(document)


#: The fields of one evaluated rule in :meth:`EnforcementSession.to_stored_json`, in order.
STORED_RULE_FIELDS: Final = (
    "rule_id", "rule_name", "decision", "similarities", "triggering_slice",
    "anchor_matched", "thresholds", "scoring_mode",
)  # fmt: skip
_COMPACT_MARKER: Final = "_rules_as_rows"


class _StoredRule(NamedTuple):
    rule_id: str
    rule_name: str
    decision: int
    similarities: Sequence[float]
    triggering_slice: str
    anchor_matched: object
    thresholds: Sequence[float]
    scoring_mode: str


def _stored_rule(e: EvidenceLike) -> list[Any]:
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
    if _COMPACT_MARKER not in text:
        return text
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:  # written by the standard library's fallback
        document = json.loads(text)
    if not isinstance(document, dict) or document.pop(_COMPACT_MARKER, None) != 1:
        return text
    document["rules_evaluated"] = [
        rule_document(_StoredRule(*row)) for row in document.get("rules_evaluated", ())
    ]
    return _dumps(document)


def _dumps(document: dict[str, Any]) -> str:
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
