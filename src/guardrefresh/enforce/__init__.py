"""Enforce: decide an intent against the rules in scope, as the original Guard engine did.

:class:`EnforcementEngine` is the vectorised engine the service uses;
:func:`reference_evaluate` is the executable specification it is tested and measured
against (plain loops, far too slow to serve with).
"""

from ._engine import DEFAULT_CACHE_BYTES, EnforcementEngine
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
    "MODE_MIN",
    "MODE_WEIGHTED_AVG",
    "SLOT_NAMES",
    "Decision",
    "EnforcementEngine",
    "EnforcementResult",
    "RuleEvidence",
    "RuleScoring",
    "deny_result",
    "parse_thresholds",
    "reference_evaluate",
    "rule_scoring",
]
