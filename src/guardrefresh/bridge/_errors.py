from __future__ import annotations


class BridgeError(Exception):
    """Base class for refusals by the bridge; nothing was changed."""


class RuleNotFoundError(BridgeError):
    """The rule does not exist (or not for that agent)."""


class RuleConflictError(BridgeError):
    """The request contradicts what is stored (e.g. a rule id owned by another agent)."""


class TooManyRulesError(BridgeError):
    """A request carries more rules than the configured maximum."""
