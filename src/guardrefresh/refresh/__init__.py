"""Refreshing the hot cache from warm storage: the periodic scheduler and its value objects."""

from ._config import SchedulerConfig
from ._errors import RefreshError
from ._protocol import Refresher
from ._scheduler import RefreshScheduler, SchedulerStatus
from ._stats import RefreshStats, RefreshTrigger

__all__ = [
    "RefreshError",
    "RefreshScheduler",
    "RefreshStats",
    "RefreshTrigger",
    "Refresher",
    "SchedulerConfig",
    "SchedulerStatus",
]
