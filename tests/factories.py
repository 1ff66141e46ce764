"""Builders of valid rules for tests: a plain factory and a Hypothesis strategy.

Import from tests as ``from factories import make_rule, rules`` (pytest puts this
directory on ``sys.path``), or use the ``make_rule`` fixture from ``conftest.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

from guardrefresh.model import (
    ANCHOR_DIM,
    BLOCK_SHAPE,
    MAX_ANCHORS,
    SLOT_COUNT,
    ParamScalar,
    PolicyType,
    Rule,
    RuleAnchors,
)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def make_anchors(
    counts: Sequence[int] = (1, 2, 0, 3), *, seed: int = 0, sent: Sequence[int] | None = None
) -> RuleAnchors:
    """Anchors with ``counts`` scored vectors per slot, filled with seeded float32 values.

    With ``sent``, each slot carries ``sent[s]`` vectors: the scored ones, then
    non-zero padding (the management plane pads with zeros; any values must survive).
    """
    rng = np.random.default_rng(seed)
    sent = counts if sent is None else sent
    slots = [rng.standard_normal((n, ANCHOR_DIM)).astype(np.float32).tolist() for n in sent]
    return RuleAnchors.from_slots(slots, counts)


def make_rule(rule_id: str = "r1", *, seed: int = 0, **fields: Any) -> Rule:
    """A valid rule with every field set to something non-default; override any field.

    ``seed`` varies the anchor values (and nothing else), so rules built with
    different seeds have different anchor blocks.
    """
    values: dict[str, Any] = {
        "family_id": "fam",
        "layer": "L1",
        "agent_id": "",
        "priority": 7,
        "enabled": True,
        "created_at_ms": 1_700_000_000_000,
        "params": {"limit": 3, "ratio": 0.25, "strict": True, "who": "ops", "tags": ("a", "b")},
        "anchors": make_anchors(seed=seed),
        "policy_type": PolicyType.FORBIDDEN,
        "drift_threshold": 0.125,
        "modification_spec": '{"redact": ["ssn"]}',
        "slice_weights": (0.5, 0.25, 0.125, 0.125),
        "installed_by": "agent-x",
        "config_id": "cfg-1",
        "owner": "team-a",
    }
    values.update(fields)
    rule = Rule(rule_id=rule_id, **values)
    rule.validate()
    return rule


# -- Hypothesis -------------------------------------------------------------------------

# Names are validated Unicode without NUL; lone surrogates cannot cross the wire.
_chars = st.characters(codec="utf-8", exclude_characters="\x00")
_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
#: Valid rule ids (1-40 characters).
rule_ids = st.text(_chars, min_size=1, max_size=40)
_small_names = st.sampled_from(["", "fam", "f2", "ünï", "家族"]) | st.text(_chars, max_size=12)

param_values: st.SearchStrategy[ParamScalar] = st.one_of(
    st.booleans(),
    st.integers(*INT64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(_chars, max_size=20),
    st.lists(st.text(_chars, max_size=8), max_size=4).map(tuple),
)

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(_chars, max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(_chars, max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def anchor_blocks(draw: st.DrawFn) -> RuleAnchors:
    """Any valid anchors: 0-16 vectors per slot; values include -0.0, subnormals and extremes.

    Some slots carry padding (vectors sent past the scored count), zero or not.
    """
    sent = [draw(st.integers(0, MAX_ANCHORS)) for _ in range(SLOT_COUNT)]
    counts = [draw(st.sampled_from([n, draw(st.integers(0, n))])) for n in sent]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    block = (rng.standard_normal(BLOCK_SHAPE) * 10.0 ** rng.integers(-40, 38, BLOCK_SHAPE)).astype(
        np.float32
    )
    specials = draw(st.lists(_f32, max_size=ANCHOR_DIM))
    if draw(st.booleans()):  # padding as the management plane sends it: zeros
        for s in range(SLOT_COUNT):
            block[s, counts[s] :] = 0.0
    slots = [block[s, : sent[s]].tolist() for s in range(SLOT_COUNT)]
    for s in range(SLOT_COUNT):
        if sent[s]:
            slots[s][0][: len(specials)] = specials
            break
    return RuleAnchors.from_slots(slots, counts)


@st.composite
def rules(draw: st.DrawFn, rule_id: st.SearchStrategy[str] | None = None) -> Rule:
    """Any valid rule (every field drawn), as :meth:`Rule.validate` accepts it."""
    spec_doc = draw(st.none() | _json_values)
    rule = Rule(
        rule_id=draw(rule_id if rule_id is not None else rule_ids),
        family_id=draw(_small_names),
        layer=draw(_small_names),
        agent_id=draw(_small_names),
        priority=draw(st.integers(*INT32)),
        enabled=draw(st.booleans()),
        created_at_ms=draw(st.integers(*INT64)),
        params=draw(
            st.dictionaries(st.text(_chars, min_size=1, max_size=10), param_values, max_size=5)
        ),
        anchors=draw(anchor_blocks()),
        policy_type=draw(st.sampled_from(PolicyType)),
        drift_threshold=draw(st.floats(min_value=0.0, width=32, allow_infinity=False)),
        modification_spec=""
        if spec_doc is None
        else json.dumps(spec_doc, ensure_ascii=draw(st.booleans())),
        slice_weights=draw(st.just(()) | st.tuples(_f32, _f32, _f32, _f32)),
        installed_by=draw(_small_names),
        config_id=draw(_small_names),
        owner=draw(_small_names),
    )
    rule.validate()
    return rule
