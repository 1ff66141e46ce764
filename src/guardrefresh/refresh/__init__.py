"""Refreshing the hot cache from warm storage: the event-driven service, the periodic scheduler."""

from ._config import SchedulerConfig
from ._errors import RefreshError
from ._protocol import Refresher
from ._scheduler import RefreshScheduler, SchedulerStatus
from ._service import RefreshObserver, RefreshService, open_refresh_service
from ._staleness import STALENESS_INTERVALS, is_stale, staleness_limit
from ._stats import RefreshStats, RefreshTrigger

__all__ = [
    "STALENESS_INTERVALS",
    "RefreshError",
    "RefreshObserver",
    "RefreshScheduler",
    "RefreshService",
    "RefreshStats",
    "RefreshTrigger",
    "Refresher",
    "SchedulerConfig",
    "SchedulerStatus",
    "is_stale",
    "open_refresh_service",
    "staleness_limit",
]
