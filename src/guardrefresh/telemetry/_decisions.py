"""The decisions a session records: their names, and the original's 0/1 form."""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["BLOCK", "DECISION_NAMES", "PASS", "decision_name_of", "legacy_decision"]

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
