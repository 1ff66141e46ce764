"""Settings of the periodic refresh: :class:`SchedulerConfig`, the ``[scheduler]`` section."""

from __future__ import annotations

import math
from typing import Any

import attrs

from ..settings import (
    BOOLEAN,
    FRACTION,
    SECONDS,
    ConfigError,
    above,
    between,
    derived_setting,
    section,
    setting,
)

__all__ = ["SchedulerConfig"]

#: The first retry delay when the refresh interval is longer.
_BACKOFF_INITIAL_S = 30.0


def _backoff_default(config: Any) -> float:
    # A short interval (2 s in a test) must not be refused for a default the user never
    # set: the delay starts at the interval when that is shorter. A bad interval is left
    # for its own validator to report.
    interval = config.refresh_interval
    if (
        isinstance(interval, int | float)
        and not isinstance(interval, bool)
        and math.isfinite(interval)
        and interval > 0
    ):
        return min(_BACKOFF_INITIAL_S, float(interval))
    return _BACKOFF_INITIAL_S


def _duty_cycle(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not (isinstance(value, float | int) and not isinstance(value, bool) and 0 < value < 1):
        raise ConfigError(
            f"scheduler.{attribute.name}: invalid value {value!r}; allowed: a number > 0 and < 1"
        )


@section("scheduler")
@attrs.frozen(kw_only=True)
class SchedulerConfig:
    """How often, and how adaptively, the hot cache is refreshed from warm storage.

    Immutable; each field is the declaration of its setting (flag, environment
    variable, ``[scheduler]`` key, default, range, help). An invalid value raises one
    :class:`~guardrefresh.settings.ConfigError` whose message names the setting, the
    value and what is allowed, e.g. ``scheduler.refresh_interval: invalid value -5;
    allowed: a number of seconds > 0``; an inconsistent combination names the settings
    involved in :attr:`~guardrefresh.settings.ConfigError.settings`. Use
    :func:`attrs.evolve` to derive a variant.
    """

    #: Seconds between periodic refreshes (before jitter and stretching).
    refresh_interval: float = setting(
        SECONDS,
        21600.0,
        constraint=above(0),
        help="Seconds between periodic refreshes of the hot cache from warm storage "
        "(21600 = 6 h); must not exceed max_interval.",
    )
    #: Each wait is drawn uniformly from ``interval * [1 - jitter, 1 + jitter]``.
    jitter: float = setting(
        FRACTION,
        0.1,
        constraint=between(0, 0.5),
        help="Each wait is drawn from interval * [1 - jitter, 1 + jitter], so that "
        "services started together do not refresh in lockstep; 0 = exact.",
    )
    #: False: the scheduler does nothing (event-driven refreshes still work).
    enabled: bool = setting(
        BOOLEAN,
        True,
        help="Run the periodic refresh; with --no-scheduler only RefreshRules "
        "requests refresh the hot cache.",
    )
    #: Do the warm-up refresh before the service reports ready. Read by the
    #: application, which does that refresh itself; the scheduler ignores it.
    refresh_on_start: bool = setting(
        BOOLEAN, True, help="Load warm storage into the hot cache before reporting ready."
    )
    #: First retry delay after a failed refresh; doubles per consecutive failure,
    #: capped at the current interval, jittered like the interval.
    backoff_initial: float = derived_setting(
        SECONDS,
        _backoff_default,
        shown="min(30.0, refresh_interval)",
        constraint=above(0),
        help="First retry delay after a failed refresh, doubled per further failure "
        "up to the interval; must not exceed refresh_interval.",
    )
    #: Upper bound of the stretched interval (see ``max_duty_cycle``).
    max_interval: float = setting(
        SECONDS,
        86400.0,
        constraint=above(0),
        help="Upper bound in seconds of the interval when it is stretched because "
        "refreshes take long; must be >= refresh_interval.",
    )
    #: The interval is stretched so refreshing takes at most this fraction of wall
    #: time: ``min(max_interval, max(refresh_interval, duration / max_duty_cycle))``.
    #: Tuning, not a setting users see.
    max_duty_cycle: float = attrs.field(default=0.01, validator=_duty_cycle)

    def __attrs_post_init__(self) -> None:
        if self.backoff_initial > self.refresh_interval:
            raise ConfigError(
                f"backoff_initial must be <= refresh_interval ({self.refresh_interval!r} s), "
                f"got {self.backoff_initial!r}",
                settings=("scheduler.refresh_interval", "scheduler.backoff_initial"),
            )
        if self.max_interval < self.refresh_interval:
            raise ConfigError(
                f"max_interval must be >= refresh_interval ({self.refresh_interval!r} s), "
                f"got {self.max_interval!r}",
                settings=("scheduler.refresh_interval", "scheduler.max_interval"),
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
