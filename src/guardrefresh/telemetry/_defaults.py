"""The telemetry defaults, taken from the ``[telemetry]`` settings that declare them.

:class:`~guardrefresh.config.TelemetryConfig` is the one place each default is written
(with its range and help); the writers, the recorder and ``open_telemetry`` use these so
that a caller who builds them directly gets what the service gets when nothing is set.
"""

from __future__ import annotations

from typing import Final

from ..config import TelemetryConfig

__all__ = ["BATCH_WINDOW_S", "MAX_SESSIONS", "QUEUE_CAPACITY", "RETENTION_S"]

_SETTINGS: Final = TelemetryConfig()

#: Seconds the writer lets sessions gather before one commit.
BATCH_WINDOW_S: Final[float] = _SETTINGS.batch_window
#: Seconds a session is kept.
RETENTION_S: Final[float] = _SETTINGS.retention
#: Most sessions kept.
MAX_SESSIONS: Final[int] = _SETTINGS.max_sessions
#: Sessions waiting for the writer at most.
QUEUE_CAPACITY: Final[int] = _SETTINGS.queue_size
