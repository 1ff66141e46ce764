"""The Enforce RPC's messages: reading a request's fields, writing the response.

A field that is not acceptable is the client's error: :func:`invalid_argument` makes
the INVALID_ARGUMENT the handler answers, its message naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from grpclib import GRPCError, Status

from ..enforce import INTENT_DIM, EnforcementResult
from ..proto import rule_installation as pb
from ._proto_fields import upb_class

__all__ = [
    "UPB_REQUEST",
    "EnforceRequestLike",
    "enforce_response",
    "enforce_response_bytes",
    "invalid_argument",
    "request_drift",
    "request_vector",
]


def invalid_argument(message: str) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, message)


def request_vector(values: Sequence[float]) -> npt.NDArray[np.float32] | None:
    """The request's ``intent_vector``: None when empty, else 128 finite float32 values."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise invalid_argument("malformed EnforceRequest: intent_vector")
    if not len(values):
        return None
    if len(values) != INTENT_DIM:
        raise invalid_argument(
            f"intent_vector has {len(values)} values; expected {INTENT_DIM}, or none to have "
            "the management plane encode the intent"
        )
    try:
        vector = np.array(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise invalid_argument("malformed EnforceRequest: intent_vector") from None
    finite = np.isfinite(vector)
    if not finite.all():
        index = int(np.argmin(finite))
        raise invalid_argument(
            f"intent_vector[{index}] is {values[index]}; every value must be finite"
        )
    return vector


def request_drift(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_argument("malformed EnforceRequest: drift_score")
    if not math.isfinite(value):
        raise invalid_argument(f"drift_score is {value}; it must be a finite number")
    return float(value)


def enforce_response(result: EnforcementResult, request_id: str) -> pb.EnforceResponse:
    """The wire answer for ``result`` (legacy ``decision`` 1 for ALLOW and MODIFY)."""
    return pb.EnforceResponse(
        decision=1 if result.allowed else 0,
        slice_similarities=[float(s) for s in result.slice_similarities],
        rules_evaluated=result.rules_evaluated,
        evidence=[
            pb.RuleEvidence(
                rule_id=e.rule_id,
                rule_name=e.rule_name,
                decision=int(e.decision),
                similarities=[float(s) for s in e.similarities],
                triggering_slice=e.triggering_slice,
                anchor_matched=e.anchor_matched,
                thresholds=[float(t) for t in e.thresholds],
                scoring_mode=e.scoring_mode,
            )
            for e in result.evidence
        ],
        request_id=request_id,
        decision_name=result.decision_name,
        modified_params=result.modified_params,
        drift_triggered=result.drift_triggered,
    )


UPB_REQUEST: Final = upb_class(pb.EnforceRequest)
_UPB_RESPONSE: Final = upb_class(pb.EnforceResponse)


def enforce_response_bytes(result: EnforcementResult, request_id: str) -> bytes:
    """:func:`enforce_response`'s wire bytes, built and serialized in C (same bytes)."""
    message = _UPB_RESPONSE(
        decision=1 if result.allowed else 0,
        slice_similarities=result.slice_similarities,
        rules_evaluated=result.rules_evaluated,
        request_id=request_id,
        decision_name=result.decision_name,
        modified_params=result.modified_params,
        drift_triggered=result.drift_triggered,
    )
    add = message.evidence.add
    for e in result.evidence:
        add(
            rule_id=e.rule_id,
            rule_name=e.rule_name,
            decision=e.decision,
            similarities=e.similarities,
            triggering_slice=e.triggering_slice,
            anchor_matched=e.anchor_matched,
            thresholds=e.thresholds,
            scoring_mode=e.scoring_mode,
        )
    data: bytes = message.SerializeToString()
    return data


class EnforceRequestLike(Protocol):
    """The fields of an ``EnforceRequest`` (betterproto2's or protobuf's class)."""

    intent_event_json: str
    intent_vector: Sequence[float]
    request_id: str
    drift_score: float
    session_id: str
