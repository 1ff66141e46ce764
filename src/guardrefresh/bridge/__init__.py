"""The bridge: owner of the hot cache, warm storage and the rule index."""

from ._bridge import (
    DEFAULT_HOT_CAPACITY,
    DEFAULT_MAX_RULES_PER_INSTALL,
    GLOBAL_LAYER,
    Bridge,
    InstallResult,
    RuleStats,
    Tier,
)
from ._errors import BridgeError, RuleConflictError, RuleNotFoundError, TooManyRulesError

__all__ = [
    "DEFAULT_HOT_CAPACITY",
    "DEFAULT_MAX_RULES_PER_INSTALL",
    "GLOBAL_LAYER",
    "Bridge",
    "BridgeError",
    "InstallResult",
    "RuleConflictError",
    "RuleNotFoundError",
    "RuleStats",
    "Tier",
    "TooManyRulesError",
]
