"""How a rule asks to be scored: thresholds, scoring mode and name, read from its params.

The management plane sets these params (its policy converter): ``thresholds`` is a
JSON text ``{"action": .., "data": .., "resource": .., "risk": ..}``, ``rule_decision``
is ``"min"`` or ``"weighted-avg"``, ``notes`` is free text. The rules below follow
what the original engine accepted, including what it fell back to.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Mapping

import attrs

from ..model import ParamScalar
from ._result import MODE_MIN, MODE_WEIGHTED_AVG, SLOT_NAMES

Quad = tuple[float, float, float, float]

#: Used when ``params.thresholds`` is absent or cannot be read.
DEFAULT_THRESHOLDS: Quad = (0.75, 0.75, 0.75, 0.75)
#: Used when a rule has no ``slice_weights``.
DEFAULT_WEIGHTS: Quad = (0.25, 0.25, 0.25, 0.25)
MODES = (MODE_MIN, MODE_WEIGHTED_AVG)


@attrs.frozen
class RuleScoring:
    """The scoring parameters of one rule.

    ``error`` is non-empty when the rule cannot be scored (its ``rule_decision`` is
    missing or not one of :data:`MODES`); ``mode`` is then "".
    """

    thresholds: Quad
    mode: str
    name: str
    error: str = ""


def rule_scoring(rule_id: str, params: Mapping[str, ParamScalar]) -> RuleScoring:
    """Read a rule's scoring parameters from its params. Never raises."""
    thresholds = parse_thresholds(params.get("thresholds"))
    notes = params.get("notes")
    name = notes if isinstance(notes, str) else ""
    mode = params.get("rule_decision")
    expected = "(expected 'min' or 'weighted-avg')"
    error = ""
    if mode is None:
        error = f"Rule '{rule_id}' missing required rule_decision {expected}"
    elif not isinstance(mode, str):
        error = f"Rule '{rule_id}' has non-string rule_decision {expected}"
    elif mode not in MODES:
        error = f"Rule '{rule_id}' has invalid rule_decision='{mode}' {expected}"
    return RuleScoring(thresholds or DEFAULT_THRESHOLDS, "" if error else str(mode), name, error)


def effective_weights(slice_weights: tuple[float, ...]) -> Quad:
    """A rule's slice weights, or :data:`DEFAULT_WEIGHTS` when it has none."""
    if len(slice_weights) != 4:
        return DEFAULT_WEIGHTS
    return (slice_weights[0], slice_weights[1], slice_weights[2], slice_weights[3])


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its key/value pairs, so duplicate keys can be seen."""


def parse_thresholds(value: object) -> Quad | None:
    """The four thresholds of a ``thresholds`` param, or None to use the defaults.

    Accepted, as the original's decoder did: a string holding a JSON object with
    numeric ``action``, ``resource``, ``data`` and ``risk`` members (other members are
    ignored; one of the four given twice is an error), or a JSON array of exactly four
    numbers in that order. Numbers are taken as float32 (beyond its range: infinity).
    Anything else (not a string, not JSON, a missing member, a non-number, a number
    beyond double range) means the defaults.
    """
    if not isinstance(value, str):
        return None
    return _parse_thresholds_text(value)


@functools.lru_cache(maxsize=1024)
def _parse_thresholds_text(value: str) -> Quad | None:
    # Cached: rules mostly share a handful of threshold texts, and evaluation sets
    # are built from thousands of rules at once.
    try:
        doc = json.loads(value, object_pairs_hook=_Pairs, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, _Pairs):
        found: dict[str, object] = {}
        for key, item in doc:
            if key in SLOT_NAMES:
                if key in found:
                    return None
                found[key] = item
        if len(found) != 4:
            return None
        items = [found[name] for name in SLOT_NAMES]
    elif isinstance(doc, list) and len(doc) == 4:
        items = doc
    else:
        return None
    numbers: list[float] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):
            return None
        try:
            number = float(item)
        except OverflowError:
            return None
        if not math.isfinite(number):
            return None
        numbers.append(_float32(number))
    return (numbers[0], numbers[1], numbers[2], numbers[3])


def _float32(number: float) -> float:
    """``number`` rounded to float32, infinity beyond its range (as a Rust ``as f32``)."""
    try:
        result: float = _F32.unpack(_F32.pack(number))[0]
    except OverflowError:
        return math.copysign(math.inf, number)
    return result


_F32 = struct.Struct("<f")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
