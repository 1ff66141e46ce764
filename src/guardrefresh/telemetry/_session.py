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

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from ._decisions import BLOCK, DECISION_NAMES, PASS, decision_name_of, legacy_decision
from ._intent import cap_intent_json, intent_summary
from ._session_json import COMPACT_MARKER, EvidenceLike, dumps, rule_document, stored_rule

__all__ = [
    "Durations",
    "EnforcementResultLike",
    "EnforcementSession",
    "RuleEvaluation",
]


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
        return dumps(self.to_document())

    def to_stored_json(self) -> str:
        """What the database keeps: :meth:`to_json` with each evaluated rule as a row
        (:data:`STORED_RULE_FIELDS`) instead of an object of 18 fields, most of them
        constant. :func:`expand_stored_json` turns it back into exactly :meth:`to_json`.

        Less than half the bytes at 100 rules (48 KB → about 20 KB), and no per-rule
        dictionaries to build: the writer's CPU and disk traffic per session follow.
        """
        document = self.to_document(rules=False)
        document["rules_evaluated"] = [stored_rule(e) for e in self.evidence]
        document[COMPACT_MARKER] = 1
        return dumps(document)
