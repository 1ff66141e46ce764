"""The hook into Enforce: one request in, one recorded session out.

The Enforce handler hands every request (an outcome: the intent, the timings, the
engine's result; for a request refused with INVALID_ARGUMENT, a DENY carrying the status
message as its error and what could be read of the intent) to its observers,
synchronously on the Trio thread.
:class:`EnforceRecorder` is such an observer: it builds the session (cheap: no parsing,
no serialisation) and queues it, never blocking. Typed against small protocols, so this
package does not depend on the server or the engine.
"""

from __future__ import annotations

import time
from typing import Protocol

from ._session import Durations, EnforcementResultLike, EnforcementSession

__all__ = [
    "EnforceOutcomeLike",
    "EnforceRecorder",
    "IntentLike",
    "SessionSink",
    "session_from_outcome",
]


class IntentLike(Protocol):
    """What a session reads from a parsed intent."""

    @property
    def raw(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def tool_name(self) -> str | None: ...


class EnforceOutcomeLike(Protocol):
    """What a session reads from one decided Enforce request."""

    @property
    def request_id(self) -> str: ...
    @property
    def intent(self) -> IntentLike: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def layer(self) -> str | None: ...
    @property
    def drift_score(self) -> float: ...
    @property
    def encode_us(self) -> int: ...
    @property
    def rule_query_us(self) -> int: ...
    @property
    def evaluation_us(self) -> int: ...
    @property
    def total_us(self) -> int: ...
    @property
    def error(self) -> str: ...
    @property
    def result(self) -> EnforcementResultLike: ...


def session_from_outcome(
    outcome: EnforceOutcomeLike, *, now_ms: int | None = None
) -> EnforcementSession:
    """The session of one request; its id is the response's ``request_id`` (for a refused
    request, the request's ``request_id``, else the UUID the handler gave it).

    The timestamp is when the request arrived (now minus its total duration).
    """
    intent = outcome.intent
    end_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return EnforcementSession.from_outcome(
        session_id=outcome.request_id,
        intent_json=intent.raw,
        tenant_id=outcome.tenant_id,
        agent_id=outcome.agent_id,
        layer=outcome.layer or "",
        drift_score=outcome.drift_score,
        result=outcome.result,
        durations=Durations(
            encode_us=max(0, outcome.encode_us),
            rule_query_us=max(0, outcome.rule_query_us),
            evaluation_us=max(0, outcome.evaluation_us),
            total_us=max(0, outcome.total_us),
        ),
        error=outcome.error or None,
        intent_summary=intent.tool_name or intent.action or "unknown",
        timestamp_ms=end_ms - outcome.total_us // 1000,
    )


class SessionSink(Protocol):
    """Where sessions go: a :class:`~guardrefresh.telemetry.TelemetryStore` or a recorder."""

    def record(self, session: EnforcementSession) -> bool: ...


class EnforceRecorder:
    """An Enforce observer recording every outcome: ``observers.append(EnforceRecorder(t))``."""

    def __init__(self, sink: SessionSink) -> None:
        self._sink = sink

    def __call__(self, outcome: EnforceOutcomeLike) -> None:
        self._sink.record(session_from_outcome(outcome))
