"""Reading a rule's scoring params: what the original's decoder accepted, and its fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guardrefresh.enforce import DEFAULT_THRESHOLDS, parse_thresholds, rule_scoring


def f32(*values: float) -> tuple[float, ...]:
    return tuple(float(np.float32(v)) for v in values)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # What the management plane sends: keys sorted, compact.
        ('{"action":0.6,"data":0.7,"resource":0.88,"risk":0.5}', f32(0.6, 0.88, 0.7, 0.5)),
        ('{"risk": 1, "data": 0, "resource": 0.5, "action": 0.25}', f32(0.25, 0.5, 0, 1)),
        (
            '{"action":0.6,"resource":0.6,"data":0.6,"risk":0.6,"extra":[1,{"x":null}]}',
            f32(0.6, 0.6, 0.6, 0.6),
        ),
        ("[0.1, 0.2, 0.3, 0.4]", f32(0.1, 0.2, 0.3, 0.4)),
        ('{"action":1e39,"resource":0,"data":0,"risk":0}', (float("inf"), 0.0, 0.0, 0.0)),
        ('{"action":-0.5,"resource":0,"data":0,"risk":2}', f32(-0.5, 0, 0, 2)),
    ],
)
def test_thresholds_read(text: str, expected: tuple[float, ...]) -> None:
    assert parse_thresholds(text) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        0.75,
        ("0.1", "0.2"),
        "",
        "not json",
        '{"action":0.6,"resource":0.6,"data":0.6}',  # a member missing
        '{"action":0.6,"resource":0.6,"data":0.6,"risk":"0.6"}',  # not a number
        '{"action":true,"resource":0.6,"data":0.6,"risk":0.6}',
        '{"action":null,"resource":0.6,"data":0.6,"risk":0.6}',
        '{"action":0.1,"action":0.2,"resource":0.6,"data":0.6,"risk":0.6}',  # duplicate
        '{"action":NaN,"resource":0.6,"data":0.6,"risk":0.6}',
        '{"action":1e400,"resource":0.6,"data":0.6,"risk":0.6}',  # beyond double range
        "[0.1, 0.2, 0.3]",
        "[0.1, 0.2, 0.3, 0.4, 0.5]",
        "0.5",
        "[" * 100_000,
    ],
)
def test_unreadable_thresholds_mean_the_defaults(value: object) -> None:
    assert parse_thresholds(value) is None
    scoring = rule_scoring(
        "r",
        {"rule_decision": "min", "thresholds": value}
        if value is not None
        else {"rule_decision": "min"},
    )  # type: ignore[dict-item]
    assert scoring.thresholds == DEFAULT_THRESHOLDS == (0.75, 0.75, 0.75, 0.75)


def test_scoring_mode_and_name() -> None:
    params = {
        "rule_decision": "weighted-avg",
        "notes": "no exports",
        "thresholds": json.dumps({"action": 0.5, "resource": 0.5, "data": 0.5, "risk": 0.5}),
    }
    scoring = rule_scoring("r1", params)
    assert (scoring.mode, scoring.name, scoring.error) == ("weighted-avg", "no exports", "")
    assert scoring.thresholds == (0.5, 0.5, 0.5, 0.5)
    assert rule_scoring("r1", {"rule_decision": "min", "notes": 3}).name == ""


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (None, "Rule 'r1' missing required rule_decision (expected 'min' or 'weighted-avg')"),
        (True, "Rule 'r1' has non-string rule_decision (expected 'min' or 'weighted-avg')"),
        ("MIN", "Rule 'r1' has invalid rule_decision='MIN' (expected 'min' or 'weighted-avg')"),
        (
            "weighted_avg",
            "Rule 'r1' has invalid rule_decision='weighted_avg' (expected 'min' or 'weighted-avg')",
        ),
    ],
)
def test_unscorable_modes(mode: object, message: str) -> None:
    params = {} if mode is None else {"rule_decision": mode}
    scoring = rule_scoring("r1", params)  # type: ignore[arg-type]
    assert (scoring.mode, scoring.error) == ("", message)
