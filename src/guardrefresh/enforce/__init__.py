"""Enforce: decide an intent against the rules in scope, as the original Guard engine did.

:class:`EnforcementEngine` is the vectorised engine the service uses;
:func:`reference_evaluate` is the executable specification it is tested and measured
against (plain loops, far too slow to serve with). :func:`parse_intent` reads a
request's ``intent_event_json``; :class:`IntentEncoder` has the management plane encode
intents that come without a vector.
"""

from ._encoder import (
    ENCODE_FAILURE_REASONS,
    INTENT_DIM,
    EncodeError,
    IntentEncoder,
    open_intent_encoder,
)
from ._engine import DEFAULT_CACHE_BYTES, EnforcementEngine
from ._intent import MAX_DEPTH, Intent, IntentError, PartialIntent, parse_intent
from ._params import (
    DEFAULT_THRESHOLDS,
    DEFAULT_WEIGHTS,
    RuleScoring,
    parse_thresholds,
    rule_scoring,
)
from ._reference import reference_evaluate
from ._result import (
    MODE_MIN,
    MODE_WEIGHTED_AVG,
    SLOT_NAMES,
    Decision,
    EnforcementResult,
    RuleEvidence,
    deny_result,
)

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_WEIGHTS",
    "ENCODE_FAILURE_REASONS",
    "INTENT_DIM",
    "MAX_DEPTH",
    "MODE_MIN",
    "MODE_WEIGHTED_AVG",
    "SLOT_NAMES",
    "Decision",
    "EncodeError",
    "EnforcementEngine",
    "EnforcementResult",
    "Intent",
    "IntentEncoder",
    "IntentError",
    "PartialIntent",
    "RuleEvidence",
    "RuleScoring",
    "deny_result",
    "open_intent_encoder",
    "parse_intent",
    "parse_thresholds",
    "reference_evaluate",
    "rule_scoring",
]
