"""Prometheus metrics of the service: :class:`ServiceMetrics` and :func:`serve_metrics`.

The names, types and labels are documented in ``docs/metrics.md``.
"""

from ._edge import CLOSE_REASONS, LOOP_ERROR_KINDS, EdgeCountsLike, LoopErrorsLike
from ._enforce import DECISION_NAMES, EnforceMetrics, EnforceOutcomeLike
from ._grpc import GRPC_TYPES, RPC_DURATION_BUCKETS, grpc_code_name
from ._http import METRICS_PATH, serve_metrics
from ._metrics import REFRESH_DURATION_BUCKETS, ServiceMetrics
from ._protocols import CacheStatsLike, RefreshStatsLike, SchedulerStatusLike
from ._reasons import REFRESH_ERROR_REASONS, refresh_error_reason
from ._replication import ReplicationStatusLike
from ._telemetry import TelemetryStatsLike

__all__ = [
    "CLOSE_REASONS",
    "DECISION_NAMES",
    "GRPC_TYPES",
    "LOOP_ERROR_KINDS",
    "METRICS_PATH",
    "REFRESH_DURATION_BUCKETS",
    "REFRESH_ERROR_REASONS",
    "RPC_DURATION_BUCKETS",
    "CacheStatsLike",
    "EdgeCountsLike",
    "EnforceMetrics",
    "EnforceOutcomeLike",
    "LoopErrorsLike",
    "RefreshStatsLike",
    "ReplicationStatusLike",
    "SchedulerStatusLike",
    "ServiceMetrics",
    "TelemetryStatsLike",
    "grpc_code_name",
    "refresh_error_reason",
    "serve_metrics",
]
