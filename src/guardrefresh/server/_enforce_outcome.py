"""What one Enforce request came to, as every observer (metrics, telemetry) sees it."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..enforce import EnforcementResult, Intent, PartialIntent

__all__ = ["EnforceObserver", "EnforceOutcome"]


@attrs.frozen(kw_only=True)
class EnforceOutcome:
    """One Enforce request: what was asked, how long each step took, the result.

    Durations are in microseconds; ``encode_us`` is 0 when the request carried its
    vector (``encoded`` False). ``rule_query_us`` is the selection of the rules in scope,
    ``evaluation_us`` the scoring and the five passes; ``total_us`` runs from the
    handler's start to the result (wire encoding excluded). ``error`` says why a
    request was denied fail-closed without a deciding rule for another reason than
    "nothing matched" ("" otherwise); when the intent could not be encoded,
    ``encode_failure`` is the reason (a value of
    :data:`~guardrefresh.enforce.ENCODE_FAILURE_REASONS`).

    ``refused``: the request was answered INVALID_ARGUMENT, not decided. ``result`` is
    then a DENY without evidence, ``error`` the status message, ``intent`` what could be
    read of it (a :class:`~guardrefresh.enforce.PartialIntent` when the intent itself
    was bad) and ``request_id`` the request's, else a new UUID, as for a decision.
    """

    request_id: str
    session_id: str
    intent: Intent | PartialIntent
    drift_score: float
    encoded: bool
    encode_us: int
    rule_query_us: int
    evaluation_us: int
    total_us: int
    encode_failure: str | None
    error: str
    result: EnforcementResult
    refused: bool = False

    @property
    def tenant_id(self) -> str:
        return self.intent.tenant_id

    @property
    def agent_id(self) -> str:
        return self.intent.agent_id

    @property
    def layer(self) -> str | None:
        return self.intent.layer

    @property
    def decision_name(self) -> str:
        return self.result.decision_name

    @property
    def rules_evaluated(self) -> int:
        return self.result.rules_evaluated


#: Called with every outcome (decided or refused), synchronously, on the Trio thread;
#: must be quick.
EnforceObserver = Callable[[EnforceOutcome], None]
