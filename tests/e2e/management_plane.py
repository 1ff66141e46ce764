"""What the Guard management plane sends, rebuilt for the tests (our own code, its shapes).

The management plane (fencio-dev/guard, ``management_plane/app/services/``) turns a
``DesignBoundary`` into a ``RuleInstance`` in two steps, reproduced here:

- ``policy_encoder.py``: one anchor per slot from the boundary's match (``op`` →
  action, ``t`` → resource, ``p`` → data, ``ctx`` → risk; data and risk only when set),
  each a 32-float vector, in a 16 x 32 float32 block per slot **padded with zero rows**,
  with ``*_count`` = the number of real anchors (0 or 1).
- ``policy_converter.py``: ``rule_id`` = boundary id, ``agent_id`` = the tenant, no
  family and no layer, ``priority``, ``enabled`` = status is "active", ``created_at_ms``;
  params ``rule_type`` ("design_boundary"), ``boundary_id``, ``boundary_name``,
  ``boundary_status``, ``policy_type``, ``rule_decision`` (the scoring mode),
  ``priority`` (a float), ``thresholds``/``weights``/``match`` as compact sorted JSON,
  ``notes`` when set; ``slice_weights`` from the weights in weighted-avg mode, else all
  1.0; ``policy_type``, ``drift_threshold`` (0 when unset) and ``modification_spec``
  (JSON text, "" when unset).

Its ``DataPlaneClient`` installs a tenant's boundaries with one InstallRules
(``config_id="design_boundary_v2"``, ``owner="management_plane"``) after a
RemovePolicy per boundary whose errors it ignores, and enforces with the intent JSON of
``_to_dataplane_payload`` plus the 128-float vector it encoded itself.

The "semantic" encoder here is a stand-in: each text maps to a fixed random unit vector
(seeded by its CRC), so equal texts have cosine 1 and different texts a cosine far below
the 0.75 thresholds. That makes every expected decision known by construction.
"""

from __future__ import annotations

import json
import types
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

SLOTS = ("action", "resource", "data", "risk")
MAX_ANCHORS = 16
DIM = 32


def slot_vector(text: str) -> np.ndarray:
    """The stand-in encoding of one slot's text: a unit float32 vector of 32."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    vector = rng.standard_normal(DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@attrs.frozen(kw_only=True)
class Boundary:
    """The fields of the management plane's ``DesignBoundary`` that reach the data plane."""

    id: str
    name: str
    tenant_id: str
    policy_type: str
    priority: int
    op: str
    t: str
    p: str | None = None
    ctx: str | None = None
    status: str = "active"
    thresholds: Mapping[str, float] = attrs.field(
        factory=lambda: {"action": 0.75, "resource": 0.75, "data": 0.75, "risk": 0.75}
    )
    scoring_mode: str = "min"
    weights: Mapping[str, float] | None = None
    drift_threshold: float | None = None
    modification_spec: Mapping[str, Any] | None = None
    notes: str | None = None
    created_at: float = 1_767_000_000.25

    def anchors_by_slot(self) -> dict[str, list[str]]:
        return {
            "action": [self.op],
            "resource": [self.t],
            "data": [self.p] if self.p else [],
            "risk": [self.ctx] if self.ctx else [],
        }


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def rule_instance(pb2: types.ModuleType, boundary: Boundary) -> Any:
    """The grpcio ``RuleInstance`` the management plane would send for ``boundary``."""
    payload = pb2.RuleAnchorsPayload()
    for slot, texts in boundary.anchors_by_slot().items():
        block = np.zeros((MAX_ANCHORS, DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            block[row] = slot_vector(text)
        getattr(payload, f"{slot}_anchors").extend(
            pb2.AnchorVector(values=list(row)) for row in block
        )
        setattr(payload, f"{slot}_count", len(texts))

    rule = pb2.RuleInstance(
        rule_id=boundary.id,
        agent_id=boundary.tenant_id,
        priority=boundary.priority,
        enabled=boundary.status == "active",
        created_at_ms=int(boundary.created_at * 1000),
        anchors=payload,
    )
    params: dict[str, Any] = {
        "rule_type": pb2.ParamValue(string_value="design_boundary"),
        "boundary_id": pb2.ParamValue(string_value=boundary.id),
        "boundary_name": pb2.ParamValue(string_value=boundary.name),
        "boundary_status": pb2.ParamValue(string_value=boundary.status),
        "policy_type": pb2.ParamValue(string_value=boundary.policy_type),
        "rule_decision": pb2.ParamValue(string_value=boundary.scoring_mode),
        "priority": pb2.ParamValue(float_value=float(boundary.priority)),
        "thresholds": pb2.ParamValue(string_value=_compact(dict(boundary.thresholds))),
        "match": pb2.ParamValue(
            string_value=_compact(
                {"op": boundary.op, "t": boundary.t, "p": boundary.p, "ctx": boundary.ctx}
            )
        ),
    }
    if boundary.weights is not None:
        params["weights"] = pb2.ParamValue(string_value=_compact(dict(boundary.weights)))
    if boundary.notes:
        params["notes"] = pb2.ParamValue(string_value=boundary.notes)
    for key, value in params.items():
        rule.params[key].CopyFrom(value)
    if boundary.scoring_mode == "weighted-avg":
        assert boundary.weights is not None
        rule.slice_weights.extend(boundary.weights[slot] for slot in SLOTS)
    else:
        rule.slice_weights.extend([1.0, 1.0, 1.0, 1.0])
    rule.policy_type = boundary.policy_type
    rule.drift_threshold = boundary.drift_threshold or 0.0
    rule.modification_spec = (
        json.dumps(dict(boundary.modification_spec)) if boundary.modification_spec else ""
    )
    return rule


def install_request(pb2: types.ModuleType, boundaries: Sequence[Boundary]) -> Any:
    """One tenant's InstallRules, as ``DataPlaneClient.install_policies`` sends it."""
    tenant = boundaries[0].tenant_id
    return pb2.InstallRulesRequest(
        agent_id=tenant,
        rules=[rule_instance(pb2, b) for b in boundaries],
        config_id="design_boundary_v2",
        owner="management_plane",
    )


@attrs.frozen(kw_only=True)
class Call:
    """An agent's tool call, the management plane's ``IntentEvent`` reduced to what it sends."""

    id: str
    tenant_id: str
    agent_id: str
    op: str
    t: str
    p: str | None = None
    ctx: str | None = None
    params: Mapping[str, Any] | None = None

    def intent_json(self) -> str:
        """``DataPlaneClient._to_dataplane_payload``: the v1.3 intent JSON it sends."""
        return json.dumps(
            {
                "id": self.id,
                "schemaVersion": "v1.3",
                "tenantId": self.tenant_id,
                "timestamp": 1_767_000_100.5,
                "actor": {"id": self.agent_id, "type": "agent"},
                "action": self.op,
                "resource": {"type": self.t},
                "data": {"sensitivity": []},
                "risk": {"authn": "none"},
                "context": None,
                "tool_params": dict(self.params) if self.params is not None else None,
                # Carried for the stand-in encoder, which has no model: the slot texts.
                "x_test_slots": {"p": self.p, "ctx": self.ctx},
            }
        )

    def vector(self) -> list[float]:
        return intent_vector(self.op, self.t, self.p, self.ctx)


def intent_vector(op: str, t: str, p: str | None, ctx: str | None) -> list[float]:
    """The 128 floats of an intent: the four slot encodings side by side (zeros if unset)."""
    parts = [
        slot_vector(text) if text else np.zeros(DIM, dtype=np.float32) for text in (op, t, p, ctx)
    ]
    return [float(v) for v in np.concatenate(parts)]


def vector_of_intent_json(document: Mapping[str, Any]) -> list[float]:
    """The stand-in encoder's answer for an intent JSON made by :meth:`Call.intent_json`."""
    extra = document.get("x_test_slots") or {}
    return intent_vector(
        document["action"], document["resource"]["type"], extra.get("p"), extra.get("ctx")
    )
