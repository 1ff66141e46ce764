"""Writing the rules JSON file (``warm export``, ``get``), round-tripping exactly.

Every float32 (anchors, ``drift_threshold``, ``slice_weights``) is written with the
fewest digits that read back as the same float32, params keep their JSON type (``1``
stays an int, ``1.0`` a float), and a ``modification_spec`` is written as an object
only when reading the object back reproduces its text. The format is documented in
``docs/rules-json.md``; reading is in ``_json_read``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ._anchors import ANCHOR_DIM, SLOTS
from ._json_read import COUNT_KEYS, INSTALL_FIELDS, compact_json
from ._rule import ParamScalar, Rule

__all__ = ["iter_rules_json", "rule_json_text", "rules_to_json"]

#: 10**k is exact in a double up to here, so ``D / 10**k`` is correctly rounded.
_EXACT_POW10 = 22
#: Rules whose floats are shortened in one numpy pass when writing a document.
_BATCH = 256
_INDENT = "  "


def rules_to_json(rules: Iterable[Rule]) -> str:
    """The rules JSON document of ``rules``: reading it back gives equal rules.

    The top-level ``agent_id``, ``config_id`` and ``owner`` are the values most
    rules share; a rule that differs carries its own ``installed_by``,
    ``config_id`` or ``owner`` key.
    """
    return "".join(iter_rules_json(list(rules)))


def iter_rules_json(rules: Sequence[Rule]) -> Iterator[str]:
    """:func:`rules_to_json` in pieces (about one per rule), for writing large stores."""
    common = {
        doc_key: _most_common(getattr(rule, attr) for rule in rules)
        for doc_key, attr in INSTALL_FIELDS
    }
    head = "".join(f"{_INDENT}{_dump(key)}: {_dump(common[key])},\n" for key in common)
    if not rules:
        yield "{\n" + head + f'{_INDENT}"rules": []\n' + "}\n"
        return
    yield "{\n" + head + f'{_INDENT}"rules": [\n'
    last = len(rules) - 1
    for start in range(0, len(rules), _BATCH):
        batch = rules[start : start + _BATCH]
        for i, (rule, floats) in enumerate(zip(batch, _floats_of(batch), strict=True)):
            text = _rule_text(rule, floats, level=2, common=common)
            yield f"{_INDENT * 2}{text}{',' if start + i < last else ''}\n"
    yield f"{_INDENT}]\n}}\n"


def _most_common(values: Iterable[str]) -> str:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else ""


def rule_json_text(rule: Rule, *, level: int = 0, common: dict[str, str] | None = None) -> str:
    """One rule as a JSON object (the format of an entry of ``"rules"``).

    ``level`` is the indentation of the object's own line: the text starts with
    ``{`` and its later lines are indented for that level. ``installed_by``,
    ``config_id`` and ``owner`` are written when they differ from ``common``
    (the document's top-level values; default: all empty).
    """
    return _rule_text(rule, _floats_of([rule])[0], level=level, common=common)


#: A rule's float32 values as doubles that print short: drift, weights, anchors by slot.
_Floats = tuple[float, list[float], list[list[list[float]]]]


def _floats_of(rules: Sequence[Rule]) -> list[_Floats]:
    """The float32 fields of ``rules``, shortened in one pass (numpy calls cost per call)."""
    parts: list[npt.NDArray[np.float32]] = []
    for rule in rules:
        parts.append(np.asarray([rule.drift_threshold, *rule.slice_weights], dtype=np.float32))
        parts.extend(rule.anchors.sent_slot(s).reshape(-1) for s in range(len(SLOTS)))
    flat: list[float] = _shortest_f32(np.concatenate(parts)) if parts else []
    out: list[_Floats] = []
    pos = 0
    for rule in rules:
        weights = flat[pos + 1 : pos + 1 + len(rule.slice_weights)]
        drift, pos = flat[pos], pos + 1 + len(weights)
        slots = []
        for sent in rule.anchors.sent:
            slots.append(
                [flat[pos + i * ANCHOR_DIM : pos + (i + 1) * ANCHOR_DIM] for i in range(sent)]
            )
            pos += sent * ANCHOR_DIM
        out.append((drift, weights, slots))
    return out


def _rule_text(rule: Rule, floats: _Floats, *, level: int, common: dict[str, str] | None) -> str:
    common = common or {"agent_id": "", "config_id": "", "owner": ""}
    drift, weights, slots = floats
    pad = _INDENT * (level + 1)
    fields: list[tuple[str, str]] = [
        ("rule_id", _dump(rule.rule_id)),
        ("family_id", _dump(rule.family_id)),
        ("layer", _dump(rule.layer)),
        ("agent_id", _dump(rule.agent_id)),
        ("priority", _dump(rule.priority)),
        ("enabled", _dump(rule.enabled)),
        ("created_at_ms", _dump(rule.created_at_ms)),
        ("policy_type", _dump(rule.policy_type.value)),
        ("drift_threshold", _dump(drift)),
        ("modification_spec", _spec_text(rule.modification_spec)),
        ("slice_weights", _dump(weights)),
        ("params", _dump({k: _param_json(v) for k, v in rule.params.items()})),
        ("anchors", _anchors_text(slots, rule.anchors.counts, level + 1)),
    ]
    for doc_key, attr in INSTALL_FIELDS:
        value = getattr(rule, attr)
        if value != common[doc_key]:
            fields.append((attr, _dump(value)))
    body = ",\n".join(f"{pad}{_dump(key)}: {text}" for key, text in fields)
    return "{\n" + body + "\n" + _INDENT * level + "}"


#: One encoder for every value written: json.dumps with options builds one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _dump(value: object) -> str:
    return _ENCODER.encode(value)


def _param_json(value: ParamScalar) -> object:
    return list(value) if isinstance(value, tuple) else value


def _spec_text(spec: str) -> str:
    """An object when that reads back as exactly ``spec``; the string otherwise."""
    if spec.startswith("{"):
        try:
            obj = json.loads(spec)
            if isinstance(obj, dict) and compact_json(obj) == spec:
                return _dump(obj)
        except (ValueError, RecursionError):  # not JSON, numbers JSON cannot write back (1e400)
            pass
    return _dump(spec)


def _anchors_text(slots: list[list[list[float]]], counts: Sequence[int], level: int) -> str:
    pad = _INDENT * (level + 1)
    parts = []
    for name, vectors in zip(SLOTS, slots, strict=True):
        if not vectors:
            parts.append(f"{pad}{_dump(name)}: []")
            continue
        # float.__repr__ is what json.dumps writes for a float, with less overhead per call.
        rows = ",\n".join(
            f"{pad}{_INDENT}[{', '.join(map(float.__repr__, row))}]" for row in vectors
        )
        parts.append(f"{pad}{_dump(name)}: [\n{rows}\n{pad}]")
    # A count is written only when some vectors are padding (the list length otherwise).
    parts.extend(
        f"{pad}{_dump(key)}: {count}"
        for key, count, vectors in zip(COUNT_KEYS, counts, slots, strict=True)
        if count != len(vectors)
    )
    return "{\n" + ",\n".join(parts) + "\n" + _INDENT * level + "}"


def _shortest_f32(values: npt.NDArray[np.float32]) -> Any:
    """Doubles whose ``repr`` has the fewest digits that read back as ``values``.

    For every float32 ``x`` this finds the shortest decimal ``D * 10**-k`` whose
    nearest double, converted to float32, is ``x`` again (that is exactly what a
    reader does: JSON text -> double -> float32). Where ``10**k`` is not exact in a
    double (extreme exponents) it falls back to the double equal to ``x``, whose
    ``repr`` round-trips too, only with more digits. Returns nested lists.
    """
    x = np.ascontiguousarray(values, dtype=np.float32)
    flat_x = x.reshape(-1)
    out = flat_x.astype(np.float64)  # the fallback: the double equal to x
    resolved = (out == 0) | ~np.isfinite(out)
    todo = np.flatnonzero(~resolved)
    exponent = np.floor(np.log10(np.abs(out[todo])))
    for digits in range(1, 10):
        k = digits - 1 - exponent
        exact = np.abs(k) <= _EXACT_POW10
        todo, k, exponent = todo[exact], k[exact], exponent[exact]
        if not len(todo):
            break
        d = out[todo]
        scale = 10.0 ** np.abs(k)
        up = k >= 0
        # One correctly rounded operation on exact operands: the double nearest D*10**-k.
        mantissa = np.rint(np.where(up, d * scale, d / scale))
        candidate = np.where(up, mantissa / scale, mantissa * scale)
        with np.errstate(over="ignore", invalid="ignore"):
            hit = candidate.astype(np.float32).view(np.uint32) == flat_x[todo].view(np.uint32)
        out[todo[hit]] = candidate[hit]
        resolved[todo[hit]] = True
        todo, exponent = todo[~hit], exponent[~hit]
    # Extreme exponents (rare): numpy's shortest float32 digits, one value at a time.
    for i in np.flatnonzero(~resolved).tolist():
        shortest = float(np.format_float_scientific(flat_x[i], unique=True))
        if np.float32(shortest).view(np.uint32) == flat_x[i].view(np.uint32):
            out[i] = shortest
    return out.reshape(x.shape).tolist()
