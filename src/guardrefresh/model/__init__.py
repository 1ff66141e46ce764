"""The domain model: rules, their anchors, validation and wire conversion."""

from ._anchors import (
    ANCHOR_DIM,
    BLOCK_BYTES,
    BLOCK_SHAPE,
    MAX_ANCHORS,
    SLOT_COUNT,
    SLOTS,
    RuleAnchors,
    Slot,
)
from ._convert import rule_from_proto, rule_to_proto
from ._errors import RuleValidationError
from ._json import rules_from_json, rules_to_json
from ._rule import (
    MAX_RULE_ID_CHARS,
    POLICY_BY_CODE,
    POLICY_CODES,
    ParamScalar,
    PolicyType,
    Rule,
)

__all__ = [
    "ANCHOR_DIM",
    "BLOCK_BYTES",
    "BLOCK_SHAPE",
    "MAX_ANCHORS",
    "MAX_RULE_ID_CHARS",
    "POLICY_BY_CODE",
    "POLICY_CODES",
    "SLOTS",
    "SLOT_COUNT",
    "ParamScalar",
    "PolicyType",
    "Rule",
    "RuleAnchors",
    "RuleValidationError",
    "Slot",
    "rule_from_proto",
    "rule_to_proto",
    "rules_from_json",
    "rules_to_json",
]
