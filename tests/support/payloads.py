"""Request payloads the suites share: seeded anchors, as either kind of message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from guardrefresh.proto import rule_installation as pb

SLOTS = ("action", "resource", "data", "risk")
ANCHOR_DIM = 32


def anchor_rows(count: int, *, seed: int) -> list[list[float]]:
    """``count`` seeded vectors of 32 float32 values (exact in float32, so they survive
    the wire and storage bit for bit)."""
    rng = np.random.default_rng(seed)
    rows: list[list[float]] = rng.standard_normal((count, ANCHOR_DIM)).astype(np.float32).tolist()
    return rows


def anchors_payload(
    counts: Sequence[int] = (16, 16, 16, 16), *, seed: int = 0, pb2: Any = None
) -> Any:
    """A RuleAnchorsPayload with ``counts`` seeded vectors per slot and matching counts.

    A betterproto2 message (the project's own classes), or, given grpcio's generated
    ``pb2`` module, a grpcio message with the same content.
    """
    slots = [anchor_rows(count, seed=seed * 4 + i) for i, count in enumerate(counts)]
    if pb2 is None:
        fields: dict[str, Any] = {}
        for name, rows, count in zip(SLOTS, slots, counts, strict=True):
            fields[f"{name}_anchors"] = [pb.AnchorVector(values=row) for row in rows]
            fields[f"{name}_count"] = count
        return pb.RuleAnchorsPayload(**fields)
    payload = pb2.RuleAnchorsPayload()
    for name, rows, count in zip(SLOTS, slots, counts, strict=True):
        vectors = getattr(payload, f"{name}_anchors")
        for row in rows:
            vectors.add(values=row)
        setattr(payload, f"{name}_count", count)
    return payload
