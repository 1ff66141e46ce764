"""The Enforce metrics: decisions, their latency, rules evaluated, encoder failures."""

from __future__ import annotations

from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = [
    "DECISION_NAMES",
    "ENCODE_DURATION_BUCKETS",
    "ENFORCE_DURATION_BUCKETS",
    "RULES_EVALUATED_BUCKETS",
    "EnforceMetrics",
    "EnforceOutcomeLike",
]

#: Every value of the ``decision`` label (the engine's decision names).
DECISION_NAMES: Final = ("ALLOW", "DENY", "MODIFY", "STEP_UP", "DEFER")

#: 100 µs .. 2.5 s: a decision over 100 rules takes about a millisecond; one that waits
#: for the management plane's encoder up to its 1.5 s timeout.
ENFORCE_DURATION_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 1.5, 2.5,
)  # fmt: skip
ENCODE_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5,
)  # fmt: skip
#: Evidence entries of one decision (0 = nothing in scope, or fail-closed before any rule).
RULES_EVALUATED_BUCKETS: Final = (
    0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000,
)  # fmt: skip


class EnforceOutcomeLike(Protocol):
    """What the metrics read from one decided Enforce request."""

    @property
    def decision_name(self) -> str: ...
    @property
    def rules_evaluated(self) -> int: ...
    @property
    def total_us(self) -> int: ...
    @property
    def encode_us(self) -> int: ...
    @property
    def encoded(self) -> bool: ...
    @property
    def encode_failure(self) -> str | None: ...
    @property
    def refused(self) -> bool: ...


class EnforceMetrics:
    """Counters and histograms of Enforce, registered in the service's registry."""

    def __init__(
        self, registry: CollectorRegistry, encode_failure_reasons: tuple[str, ...]
    ) -> None:
        self._reasons = frozenset(encode_failure_reasons)
        self._decisions = Counter(
            "guardrefresh_enforce_total",
            "Enforce requests decided, by decision (fail-closed denials included; requests "
            "refused with an error status are not decisions).",
            ["decision"],
            registry=registry,
        )
        self._duration = Histogram(
            "guardrefresh_enforce_duration_seconds",
            "Time to decide an Enforce request in the handler: parsing, encoding (when the "
            "request has no vector), rule selection and evaluation; wire encoding excluded.",
            buckets=ENFORCE_DURATION_BUCKETS,
            registry=registry,
        )
        self._rules = Histogram(
            "guardrefresh_enforce_rules_evaluated",
            "Rules evaluated (evidence entries) per Enforce decision.",
            buckets=RULES_EVALUATED_BUCKETS,
            registry=registry,
        )
        self._encode_duration = Histogram(
            "guardrefresh_enforce_encode_duration_seconds",
            "Successful calls to the management plane's /encode/intent.",
            buckets=ENCODE_DURATION_BUCKETS,
            registry=registry,
        )
        self._encode_failures = Counter(
            "guardrefresh_enforce_encode_failures_total",
            "Enforce requests denied because their intent could not be encoded, by reason.",
            ["reason"],
            registry=registry,
        )
        # Known label values start at 0, so rate() and increase() see the first event.
        for name in DECISION_NAMES:
            self._decisions.labels(decision=name)
        for reason in encode_failure_reasons:
            self._encode_failures.labels(reason=reason)

    def observe(self, outcome: EnforceOutcomeLike) -> None:
        """One request. :exc:`ValueError` for an unknown decision or reason.

        A refused request (answered INVALID_ARGUMENT) decided nothing: it is left out of
        every Enforce metric (``grpc_server_handled_total`` counts it by status).
        """
        if outcome.refused:
            return
        if outcome.decision_name not in DECISION_NAMES:
            raise ValueError(
                f"decision must be one of {DECISION_NAMES}, got {outcome.decision_name!r}"
            )
        failure = outcome.encode_failure
        if failure is not None and failure not in self._reasons:
            raise ValueError(f"unknown encode failure reason {failure!r}")
        self._decisions.labels(decision=outcome.decision_name).inc()
        self._duration.observe(max(outcome.total_us, 0) / 1e6)
        self._rules.observe(outcome.rules_evaluated)
        if failure is not None:
            self._encode_failures.labels(reason=failure).inc()
        elif outcome.encoded:
            self._encode_duration.observe(max(outcome.encode_us, 0) / 1e6)
