"""Settings of the periodic refresh: :class:`SchedulerConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["SchedulerConfig"]


_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _positive_seconds(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    name = attribute.name
    # bool is an int subclass; `refresh_interval=True` is a mistake, not 1 second.
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    if not value > 0:  # also catches NaN
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    if math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")


def _fraction(low: float, high: float, *, low_open: bool, high_open: bool) -> _Validator:
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (low < value if low_open else low <= value)
            and (value < high if high_open else value <= high)
        )
        if not ok:
            raise ValueError(f"{attribute.name} must be in {interval}, got {value!r}")

    return check


def _bool(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be True or False, got {value!r}")


@attrs.frozen(kw_only=True)
class SchedulerConfig:
    """How often, and how adaptively, the hot cache is refreshed from warm storage.

    Immutable. An invalid setting raises a single :class:`ValueError` whose
    message names the setting, the value and what is allowed, e.g.
    ``refresh_interval must be > 0 seconds, got -5``. Use :func:`attrs.evolve`
    to derive a variant.
    """

    #: Seconds between periodic refreshes (before jitter and stretching).
    refresh_interval: float = attrs.field(default=21600.0, validator=_positive_seconds)
    #: False: the scheduler does nothing (event-driven refreshes still work).
    enabled: bool = attrs.field(default=True, validator=_bool)
    #: Each wait is drawn uniformly from ``interval * [1 - jitter, 1 + jitter]``
    #: so a fleet started together does not refresh in lockstep. 0 = exact.
    jitter: float = attrs.field(
        default=0.1, validator=_fraction(0, 0.5, low_open=False, high_open=False)
    )
    #: Do the warm-up refresh before the service reports ready. Read by the
    #: application, which does that refresh itself; the scheduler ignores it.
    refresh_on_start: bool = attrs.field(default=True, validator=_bool)
    #: First retry delay after a failed refresh; doubles per consecutive failure,
    #: capped at the current interval, jittered like the interval.
    backoff_initial: float = attrs.field(default=30.0, validator=_positive_seconds)
    #: Upper bound of the stretched interval (see ``max_duty_cycle``).
    max_interval: float = attrs.field(default=86400.0, validator=_positive_seconds)
    #: The interval is stretched so refreshing takes at most this fraction of wall
    #: time: ``min(max_interval, max(refresh_interval, duration / max_duty_cycle))``.
    max_duty_cycle: float = attrs.field(
        default=0.01, validator=_fraction(0, 1, low_open=True, high_open=True)
    )

    def __attrs_post_init__(self) -> None:
        if self.backoff_initial > self.refresh_interval:
            raise ValueError(
                f"backoff_initial must be <= refresh_interval ({self.refresh_interval!r} s), "
                f"got {self.backoff_initial!r}"
            )
        if self.max_interval < self.refresh_interval:
            raise ValueError(
                f"max_interval must be >= refresh_interval ({self.refresh_interval!r} s), "
                f"got {self.max_interval!r}"
            )

    @classmethod
    def production(cls) -> SchedulerConfig:
        """The defaults: every 6 h, 10 % jitter, warm-up refresh on start."""
        return cls()

    @classmethod
    def testing(cls) -> SchedulerConfig:
        """Every 60 s, for staging and integration tests."""
        return cls(refresh_interval=60.0)

    @classmethod
    def disabled(cls) -> SchedulerConfig:
        """No periodic refresh; only event-driven (RPC) refreshes happen."""
        return cls(enabled=False)

    @classmethod
    def aggressive(cls) -> SchedulerConfig:
        """Every hour, for deployments whose warm storage changes often."""
        return cls(refresh_interval=3600.0)
