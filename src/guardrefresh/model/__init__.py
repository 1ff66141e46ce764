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
from ._convert import rule_from_proto, rule_from_upb, rule_to_proto
from ._errors import RuleValidationError
from ._json_read import rules_from_json
from ._json_write import iter_rules_json, rule_json_text, rules_to_json
from ._rule import (
    MAX_EXTRAS_BYTES,
    MAX_JSON_DEPTH,
    MAX_NAME_CHARS,
    MAX_REFRESH_FAMILIES,
    MAX_RULE_ID_CHARS,
    POLICY_BY_CODE,
    POLICY_CODES,
    ParamScalar,
    PolicyType,
    Rule,
    check_family_ids,
    json_depth,
)
from ._text import MAX_ECHO_CHARS, clip, echo, echo_names, escape_controls

__all__ = [
    "ANCHOR_DIM",
    "BLOCK_BYTES",
    "BLOCK_SHAPE",
    "MAX_ANCHORS",
    "MAX_ECHO_CHARS",
    "MAX_EXTRAS_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_REFRESH_FAMILIES",
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
    "check_family_ids",
    "clip",
    "echo",
    "echo_names",
    "escape_controls",
    "iter_rules_json",
    "json_depth",
    "rule_from_proto",
    "rule_from_upb",
    "rule_json_text",
    "rule_to_proto",
    "rules_from_json",
    "rules_to_json",
]
