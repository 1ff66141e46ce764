"""The connection layer's metrics, read at scrape time from the host's counters.

The gRPC host's connection guard and the asyncio loop's exception handler keep plain
integer counters (they run in asyncio callbacks, where a Prometheus object would only
add cost); this collector turns them into metric families on each scrape, so the
numbers can never drift from their source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = [
    "CLOSE_REASONS",
    "LOOP_ERROR_KINDS",
    "EdgeCollector",
    "EdgeCountsLike",
    "LoopErrorsLike",
]

logger = logging.getLogger(__name__)

#: ``reason`` of ``guardrefresh_connections_closed_total``, and the counter it reads.
CLOSE_REASONS: Final = (
    ("idle", "idle_closed"),  # no stream for --idle-timeout: GOAWAY NO_ERROR
    ("calm", "calm_closed"),  # rapid reset or unread output: GOAWAY ENHANCE_YOUR_CALM
    ("error", "error_closed"),  # handling it raised, or an oversized frame
)
#: ``kind`` of ``guardrefresh_loop_errors_total``, and the counter it reads.
LOOP_ERROR_KINDS: Final = (
    ("connection", "connection_errors"),
    ("other", "other_errors"),
)


class EdgeCountsLike(Protocol):
    """What the metrics read from :class:`guardrefresh.server.EdgeCounts`."""

    @property
    def refused(self) -> int: ...
    @property
    def idle_closed(self) -> int: ...
    @property
    def calm_closed(self) -> int: ...
    @property
    def error_closed(self) -> int: ...


class LoopErrorsLike(Protocol):
    """What the metrics read from the asyncio loop's error handler
    (:class:`guardrefresh.server.LoopErrorHandler`)."""

    @property
    def accept_errors(self) -> int: ...
    @property
    def connection_errors(self) -> int: ...
    @property
    def other_errors(self) -> int: ...


class EdgeCollector:
    """A ``prometheus_client`` collector over the host's connection counters.

    ``counts``, ``open_connections`` and ``held_requests`` are called at each scrape
    (on the Trio thread that serves it, the thread the counters live on);
    ``loop_errors`` may be None when the loop's handler is not ours (its families are
    then left out). A callback that raises costs its own families in that scrape
    (logged), never the whole scrape.
    """

    def __init__(
        self,
        *,
        counts: Callable[[], EdgeCountsLike],
        open_connections: Callable[[], int],
        held_requests: Callable[[], int],
        max_connections: int,
        loop_errors: LoopErrorsLike | None,
    ) -> None:
        if isinstance(max_connections, bool) or max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        self._counts = counts
        self._open = open_connections
        self._held = held_requests
        self._max = max_connections
        self._loop_errors = loop_errors

    def describe(self) -> Iterable[Metric]:
        return [*self._connections(None, None, None), *self._loop(None)]

    def collect(self) -> Iterable[Metric]:
        try:
            counts, open_now, held = self._counts(), self._open(), self._held()
        except Exception:
            logger.exception(
                "metrics: reading connection counts failed; their metrics are left out"
            )
            families: list[Metric] = []
        else:
            families = self._connections(counts, open_now, held)
        if self._loop_errors is not None:
            families.extend(self._loop(self._loop_errors))
        return families

    def _connections(
        self, counts: EdgeCountsLike | None, open_now: int | None, held: int | None
    ) -> list[Metric]:
        closed = CounterMetricFamily(
            "guardrefresh_connections_closed_total",
            "Client connections the service closed, by reason: idle (no stream for "
            "--idle-timeout), calm (GOAWAY ENHANCE_YOUR_CALM: too many stream resets or too "
            "much unread output), error (handling it raised, or a frame over the size limit).",
            labels=["reason"],
        )
        if counts is not None:
            for reason, attr in CLOSE_REASONS:
                closed.add_metric([reason], getattr(counts, attr))
        return [
            GaugeMetricFamily(
                "guardrefresh_connections_open",
                "Client connections open now (closing ones included: they hold a descriptor).",
                value=open_now,
            ),
            GaugeMetricFamily(
                "guardrefresh_connections_max",
                "Most client connections open at once (--max-connections, or derived from "
                "the descriptor limit); more are closed when accepted.",
                value=None if counts is None else self._max,
            ),
            CounterMetricFamily(
                "guardrefresh_connections_refused_total",
                "Connections closed as soon as accepted because guardrefresh_connections_max "
                "were open.",
                value=None if counts is None else counts.refused,
            ),
            closed,
            GaugeMetricFamily(
                "guardrefresh_requests_awaiting_body",
                "Requests whose headers arrived without any of their body yet; they become "
                "calls when it begins, or end DEADLINE_EXCEEDED after --request-timeout.",
                value=held,
            ),
        ]

    @staticmethod
    def _loop(errors: LoopErrorsLike | None) -> list[Metric]:
        by_kind = CounterMetricFamily(
            "guardrefresh_loop_errors_total",
            "Errors no asyncio code caught that reached the loop's handler (logged, "
            "contained): connection (a connection's callback raised; it was closed), other.",
            labels=["kind"],
        )
        if errors is not None:
            for kind, attr in LOOP_ERROR_KINDS:
                by_kind.add_metric([kind], getattr(errors, attr))
        return [
            CounterMetricFamily(
                "guardrefresh_accept_errors_total",
                "accept() failures on the gRPC port for lack of resources (EMFILE, ENFILE, "
                "ENOBUFS, ENOMEM); asyncio retries one second later.",
                value=None if errors is None else errors.accept_errors,
            ),
            by_kind,
        ]
