"""Tests of the rules JSON format (guardrefresh.model.rules_from_json / rules_to_json)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import make_rule, rules
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrefresh.model import (
    ANCHOR_DIM,
    PolicyType,
    Rule,
    RuleValidationError,
    rule_json_text,
    rules_from_json,
    rules_to_json,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rules.json"


def minimal_doc() -> dict[str, Any]:
    """A valid document with one small rule, to be broken one field at a time."""
    return {
        "agent_id": "bot",
        "config_id": "cfg",
        "owner": "team",
        "rules": [
            {
                "rule_id": "r1",
                "family_id": "fam",
                "layer": "L1",
                "policy_type": "forbidden",
                "params": {"n": 1},
                "anchors": {"action": [[0.5] * ANCHOR_DIM]},
            }
        ],
    }


def parse(doc: object) -> list[Rule]:
    return rules_from_json(json.dumps(doc))


# -- the example file ---------------------------------------------------------------


def test_example_file_is_valid_and_written_in_the_canonical_layout() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    example = rules_from_json(text)
    assert [r.rule_id for r in example] == [
        "forbid-drop-production-database",
        "deny-pii-in-outbound-email",
        "allow-read-public-docs",
        "defer-large-refund",
    ]
    assert {r.policy_type for r in example} == set(PolicyType)
    assert {(r.installed_by, r.config_id, r.owner) for r in example} == {
        ("support-assistant", "support-assistant-guard-2025-06", "platform-security")
    }
    # Writing the parsed rules gives the file back byte for byte: it is an export.
    assert rules_to_json(example) == text


def test_example_params_keep_their_json_types() -> None:
    by_id = {r.rule_id: r for r in rules_from_json(EXAMPLE.read_bytes())}
    refund = by_id["defer-large-refund"].params
    assert type(refund["amount_threshold"]) is float and refund["amount_threshold"] == 500.0
    assert type(refund["approval_timeout_s"]) is int and refund["approval_timeout_s"] == 900
    drop = by_id["forbid-drop-production-database"].params
    assert drop["audit"] is True
    assert drop["environments"] == ("production",)
    assert by_id["deny-pii-in-outbound-email"].modification_spec.startswith('{"action":"redact"')


# -- reading -------------------------------------------------------------------------


def test_minimal_rule_gets_the_documented_defaults() -> None:
    [rule] = parse(minimal_doc())
    assert rule == Rule(
        rule_id="r1",
        family_id="fam",
        layer="L1",
        agent_id="",
        priority=0,
        enabled=True,
        created_at_ms=0,
        params={"n": 1},
        anchors=rule.anchors,
        policy_type=PolicyType.FORBIDDEN,
        drift_threshold=0.0,
        modification_spec="",
        slice_weights=(),
        installed_by="bot",
        config_id="cfg",
        owner="team",
    )
    assert rule.anchors.counts == (1, 0, 0, 0)
    assert rule.anchors.slot(0).tolist() == [[0.5] * ANCHOR_DIM]


def test_integer_and_float_params_keep_their_type() -> None:
    doc = minimal_doc()
    doc["rules"][0]["params"] = {"i": 1, "f": 1.0, "b": True, "s": "1", "l": ["a"], "e": []}
    [rule] = rules_from_json(json.dumps(doc))
    assert [type(rule.params[k]) for k in "ifbsle"] == [int, float, bool, str, tuple, tuple]
    assert rule != parse({**doc, "rules": [{**doc["rules"][0], "params": {"i": 1.0}}]})[0]


def test_modification_spec_object_is_stored_as_compact_json() -> None:
    doc = minimal_doc()
    doc["rules"][0]["modification_spec"] = {"redact": ["ssn", "pan"], "mask": "*", "n": 2.5}
    [rule] = parse(doc)
    assert rule.modification_spec == '{"redact":["ssn","pan"],"mask":"*","n":2.5}'


def test_rule_keys_override_the_top_level_installer_fields() -> None:
    doc = minimal_doc()
    doc["rules"][0].update(installed_by="other", config_id="", owner="them")
    [rule] = parse(doc)
    assert (rule.installed_by, rule.config_id, rule.owner) == ("other", "", "them")


def test_empty_document() -> None:
    assert rules_from_json('{"rules": []}') == []
    assert rules_from_json(rules_to_json([])) == []


def test_bytes_with_utf8_names() -> None:
    doc = minimal_doc()
    doc["rules"][0]["family_id"] = "家族"
    [rule] = rules_from_json(json.dumps(doc, ensure_ascii=False).encode("utf-8"))
    assert rule.family_id == "家族"


def _set(path: str, value: object) -> Any:
    """A mutation of minimal_doc(): set the value at a dotted path (``rules.0.priority``)."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _delete(path: str) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        del target[last]

    return mutate


VECTOR = [0.5] * ANCHOR_DIM

BAD_RULES = [
    (_delete("rules.0.policy_type"), "policy_type", "is required (one of forbidden, "),
    (_set("rules.0.policy_type", "block"), "policy_type", "unknown policy type 'block'"),
    (_set("rules.0.priority", 1.5), "priority", "must be an integer, got a number"),
    (_set("rules.0.priority", True), "priority", "must be an integer, got a boolean"),
    (_set("rules.0.priority", 2**31), "priority", "must be in -2147483648..2147483647"),
    (_set("rules.0.created_at_ms", "0"), "created_at_ms", "must be an integer, got a string"),
    (_set("rules.0.enabled", "yes"), "enabled", "must be true or false, got a string"),
    (_set("rules.0.family_id", None), "family_id", "must be a string, got null"),
    (_set("rules.0.family_id", "x\u0000y"), "family_id", "must not contain NUL"),
    (_set("rules.0.priorty", 3), "priorty", "unknown key (known keys: rule_id, "),
    (_set("rules.0.drift_threshold", -0.5), "drift_threshold", "must be finite and >= 0"),
    (_set("rules.0.drift_threshold", "0.2"), "drift_threshold", "must be a number"),
    (_set("rules.0.drift_threshold", 1e39), "drift_threshold", "must be finite"),
    (_set("rules.0.slice_weights", [0.5, 0.5]), "slice_weights", "must be 4 values or empty"),
    (_set("rules.0.slice_weights", [0.5, 0.5, "x", 1]), "slice_weights[2]", "must be a number"),
    (_set("rules.0.modification_spec", 7), "modification_spec", "must be an object or a string"),
    (_set("rules.0.modification_spec", "{nope"), "modification_spec", "must be JSON"),
    (_set("rules.0.params", []), "params", "must be an object, got a list"),
    (_set("rules.0.params.x", None), "params['x']", "got null"),
    (_set("rules.0.params.x", {"a": 1}), "params['x']", "got an object"),
    (_set("rules.0.params.x", ["a", 1]), "params['x']", "got a list with non-strings"),
    (_set("rules.0.params.x", 2**63), "params['x']", "must be in"),
    (_set("rules.0.params.", 1), "params", "keys must not be empty"),
    (_set("rules.0.anchors", [VECTOR]), "anchors", "must be an object, got a list"),
    (_set("rules.0.anchors.actions", [VECTOR]), "anchors.actions", "unknown key"),
    (_set("rules.0.anchors.risk", VECTOR), "anchors.risk[0]", "must be a list of numbers"),
    (_set("rules.0.anchors.risk", {"a": 1}), "anchors.risk", "must be a list of vectors"),
    (
        _set("rules.0.anchors.action.0", VECTOR[:31]),
        "anchors.action[0]",
        "anchor vectors have exactly 32 values, got 31",
    ),
    (
        _set("rules.0.anchors.data", [VECTOR] * 17),
        "anchors.data",
        "at most 16 anchors, got 17",
    ),
    (_set("rules.0.anchors.action.0.3", "0.1"), "anchors.action[0][3]", "must be a number"),
    (_set("rules.0.anchors.action.0.3", True), "anchors.action[0][3]", "got a boolean"),
    (_set("rules.0.anchors.action.0.3", 10**400), "anchors.action[0][3]", "out of range"),
    (_set("rules.0.anchors.action.0.3", 1e39), "anchors.action[0]", "must be finite"),
    (_set("rules.0.installed_by", 5), "installed_by", "must be a string, got a number"),
    (
        _set("rules.0.anchors.action_count", 2),
        "anchors.action_count",
        "count 2 exceeds the 1 action anchor vectors sent",
    ),
    (_set("rules.0.anchors.risk_count", 1), "anchors.risk_count", "exceeds the 0 risk"),
    (_set("rules.0.anchors.action_count", -1), "anchors.action_count", "got -1"),
    (_set("rules.0.anchors.action_count", 1.0), "anchors.action_count", "must be an integer"),
    (_set("rules.0.anchors.action_count", True), "anchors.action_count", "got a boolean"),
]


@pytest.mark.parametrize(("mutate", "field", "problem"), BAD_RULES)
def test_bad_rule_is_rejected_naming_the_rule_and_the_json_field(
    mutate: Any, field: str, problem: str
) -> None:
    doc = minimal_doc()
    mutate(doc)
    with pytest.raises(RuleValidationError) as info:
        parse(doc)
    assert info.value.rule_id == "r1"
    assert info.value.field == field
    assert str(info.value).startswith(f"rule 'r1': {field}: ")
    assert problem in info.value.problem


def test_anchor_width_error_reads_as_documented() -> None:
    doc = minimal_doc()
    doc["rules"][0]["anchors"]["action"][0] = VECTOR[:31]
    with pytest.raises(RuleValidationError, match=r"^rule 'r1': anchors\.action\[0\]: .* got 31$"):
        parse(doc)


BAD_DOCUMENTS = [
    ("{", "not valid JSON: Expecting property name"),
    ("[]", "the top level must be an object, got a list"),
    ("{}", 'the top level has no "rules" list'),
    ('{"rules": {}}', '"rules" must be a list, got an object'),
    ('{"rules": [], "agent": "x"}', "the top level: 'agent': unknown key"),
    ('{"rules": [], "agent_id": 3}', "top-level 'agent_id' must be a string, got a number"),
    ('{"rules": [7]}', "rules[0] must be an object, got a number"),
    ('{"rules": [{}]}', "rules[0]: rule_id is missing"),
    ('{"rules": [{"rule_id": ""}]}', "rules[0]: rule_id must be a non-empty string"),
    ('{"rules": [{"rule_id": 5}]}', "rules[0]: rule_id must be a non-empty string, got 5"),
    ('{"rules": [], "rules": []}', "duplicate key 'rules' in an object"),
    ('{"rules": [{"rule_id": "a", "drift_threshold": NaN}]}', "NaN is not a JSON number"),
    ('{"rules": [{"rule_id": "a", "priority": Infinity}]}', "Infinity is not a JSON number"),
    (b'{"rules": "\xff"}', "not valid JSON"),
]


@pytest.mark.parametrize(("text", "message"), BAD_DOCUMENTS)
def test_bad_document_is_rejected_with_a_clear_message(text: str | bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        rules_from_json(text)
    assert not isinstance(info.value, RuleValidationError)


def test_nesting_deeper_than_the_parser_goes_is_a_clear_error() -> None:
    text = '{"rules": [{"rule_id": "a", "modification_spec": ' + "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match=r"not valid JSON: nested too deeply") as info:
        rules_from_json(text + "}]}")
    assert not isinstance(info.value, RuleValidationError)


@pytest.mark.parametrize("depth", [65, 500])
def test_a_modification_spec_object_nested_too_deep_names_the_rule_and_field(depth: int) -> None:
    doc = minimal_doc()
    spec: object = 1
    for _ in range(depth):
        spec = {"a": spec}
    doc["rules"][0]["modification_spec"] = spec
    with pytest.raises(RuleValidationError) as info:
        rules_from_json(json.dumps(doc))
    assert info.value.field == "modification_spec"
    assert f"nested {depth} levels deep; the limit is 64" in str(info.value)


def test_duplicate_rule_ids_are_rejected() -> None:
    doc = minimal_doc()
    doc["rules"].append(copy.deepcopy(doc["rules"][0]))
    with pytest.raises(
        RuleValidationError, match=r"rule_id: appears twice \(rules\[0\] and rules\[1\]\)"
    ):
        parse(doc)


def test_duplicate_keys_inside_a_rule_are_rejected() -> None:
    text = json.dumps(minimal_doc()).replace('"layer": "L1"', '"layer": "L1", "layer": "L2"')
    with pytest.raises(ValueError, match="duplicate key 'layer'"):
        rules_from_json(text)


# -- writing: exact round trips ----------------------------------------------------------


def test_padded_slots_read_and_write_with_their_counts() -> None:
    doc = minimal_doc()
    zero = [0.0] * ANCHOR_DIM
    doc["rules"][0]["anchors"] = {
        "action": [VECTOR, zero, zero],
        "action_count": 1,
        "data": [VECTOR, [0.25] * ANCHOR_DIM],
        "data_count": 0,
    }
    (rule,) = parse(doc)
    assert rule.anchors.counts == (1, 0, 0, 0)
    assert rule.anchors.sent == (3, 0, 2, 0)
    text = rules_to_json([rule])
    written = json.loads(text)["rules"][0]["anchors"]
    # Counts are written only where some vectors are padding.
    assert {k: v for k, v in written.items() if k.endswith("_count")} == {
        "action_count": 1,
        "data_count": 0,
    }
    assert len(written["action"]) == 3 and written["data"][1] == [0.25] * ANCHOR_DIM
    assert rules_from_json(text) == [rule]


def test_round_trip_of_factory_rules_keeps_every_field() -> None:
    original = [
        make_rule("a"),
        make_rule("b", seed=2, params={"i": 1, "f": 1.0, "neg": -0.0, "big": 2**63 - 1}),
        make_rule("c", seed=3, installed_by="other-agent", owner="", slice_weights=()),
        make_rule("d", seed=4, modification_spec="", drift_threshold=0.1),
    ]
    back = rules_from_json(rules_to_json(original))
    assert back == original
    for a, b in zip(original, back, strict=True):
        assert a.anchors.vectors.tobytes() == b.anchors.vectors.tobytes()
        assert [type(v) for v in a.params.values()] == [type(v) for v in b.params.values()]


def test_top_level_holds_the_most_common_installer_and_rules_carry_the_rest() -> None:
    text = rules_to_json(
        [make_rule("a"), make_rule("b"), make_rule("c", installed_by="other", config_id="x")]
    )
    doc = json.loads(text)
    assert (doc["agent_id"], doc["config_id"], doc["owner"]) == ("agent-x", "cfg-1", "team-a")
    extra = [
        {k: r[k] for k in ("installed_by", "config_id", "owner") if k in r} for r in doc["rules"]
    ]
    assert extra == [{}, {}, {"installed_by": "other", "config_id": "x"}]


def test_float32_values_are_written_with_the_fewest_digits() -> None:
    anchors = [[0.1, -0.0, 1e-45, 3.4028235e38, 0.33333334] + [0.25] * 27]
    doc = minimal_doc()
    doc["rules"][0].update(
        drift_threshold=0.2, slice_weights=[0.1, 0.2, 0.3, 0.4], anchors={"risk": anchors}
    )
    [rule] = parse(doc)
    assert rule.drift_threshold != 0.2  # float32: 0.20000000298023224
    text = rules_to_json([rule])
    assert '"drift_threshold": 0.2,' in text
    assert '"slice_weights": [0.1, 0.2, 0.3, 0.4],' in text
    assert "[0.1, -0.0, 1e-45, 3.4028235e+38, 0.33333334, 0.25," in text
    assert rules_from_json(text) == [rule]


@settings(max_examples=300, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_any_float32_anchor_value_reads_back_bit_for_bit(value: float) -> None:
    doc = minimal_doc()
    doc["rules"][0]["anchors"] = {"data": [[value] * ANCHOR_DIM]}
    [rule] = parse(doc)
    text = rules_to_json([rule])
    [back] = rules_from_json(text)
    assert back.anchors.vectors.tobytes() == rule.anchors.vectors.tobytes()
    written = json.loads(text)["rules"][0]["anchors"]["data"][0][0]
    digits = re.sub(r"e.*|[-.]", "", repr(written)).strip("0")
    assert len(digits) <= 9, repr(written)  # float32 never needs more than 9


def test_modification_spec_is_written_as_an_object_only_when_exact() -> None:
    compact = make_rule("a", modification_spec='{"redact":["ssn"],"n":1.5}')
    spaced = make_rule("b", modification_spec='{"redact": ["ssn"]}')
    listed = make_rule("c", modification_spec='["x"]')
    huge = make_rule("d", modification_spec='{"n":1e400}')
    doc = json.loads(rules_to_json([compact, spaced, listed, huge]))
    specs = [r["modification_spec"] for r in doc["rules"]]
    assert specs == [{"redact": ["ssn"], "n": 1.5}, '{"redact": ["ssn"]}', '["x"]', '{"n":1e400}']
    assert rules_from_json(json.dumps(doc)) == [compact, spaced, listed, huge]


@settings(max_examples=60, deadline=None)
@given(st.lists(rules(), max_size=4, unique_by=lambda r: r.rule_id))
def test_round_trip_of_any_rules_is_exact(original: list[Rule]) -> None:
    text = rules_to_json(original)
    back = rules_from_json(text)
    assert back == original
    for a, b in zip(original, back, strict=True):
        assert a.anchors.vectors.tobytes() == b.anchors.vectors.tobytes()
        assert np.float32(a.drift_threshold).tobytes() == np.float32(b.drift_threshold).tobytes()
    assert rules_to_json(back) == text


def test_rule_json_text_is_one_rules_entry() -> None:
    rule = make_rule("a")
    text = rule_json_text(rule, level=1)
    assert text.startswith('{\n    "rule_id": "a",') and text.endswith("\n  }")
    entry = json.loads(text)
    # Installer fields differ from the (empty) defaults, so the entry carries them.
    assert (entry["installed_by"], entry["config_id"], entry["owner"]) == (
        "agent-x",
        "cfg-1",
        "team-a",
    )
    assert rules_from_json(json.dumps({"rules": [entry]})) == [rule]
