"""What one successful refresh did: :class:`RefreshStats` and :class:`RefreshTrigger`."""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

__all__ = ["RefreshStats", "RefreshTrigger"]


class RefreshTrigger(enum.StrEnum):
    """What started a refresh."""

    #: The warm-up refresh before the service reports ready.
    STARTUP = "startup"
    #: The periodic scheduler (:class:`~guardrefresh.refresh.RefreshScheduler`).
    PERIODIC = "periodic"
    #: A ``RefreshRules`` gRPC call.
    RPC = "rpc"
    #: Anything else: the CLI, an operator, a test.
    MANUAL = "manual"


def _non_negative_int(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # bool is an int subclass; True as a rule count is a bug at the call site.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _non_negative_finite(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _trigger(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, RefreshTrigger):
        allowed = ", ".join(f"RefreshTrigger.{t.name}" for t in RefreshTrigger)
        raise ValueError(f"{attribute.name} must be one of {allowed}, got {value!r}")


def _families(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(f, str) and f for f in value):
        raise ValueError(
            f"{attribute.name} must be a tuple of non-empty family names "
            f"(empty tuple = all families), got {value!r}"
        )


def _bool(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be a bool, got {value!r}")


@attrs.frozen(kw_only=True)
class RefreshStats:
    """Outcome of one successful refresh of the hot cache from warm storage.

    Immutable; every field is validated at construction and an invalid value
    raises :class:`ValueError` naming the field.
    """

    #: Rules hot as a result of this refresh (after the swap).
    rules_refreshed: int = attrs.field(validator=_non_negative_int)
    #: Load + verify + swap, measured on a monotonic clock.
    duration_ms: float = attrs.field(validator=_non_negative_finite)
    #: Wall clock, milliseconds since the epoch, when the refresh completed.
    timestamp_ms: int = attrs.field(validator=_non_negative_int)
    trigger: RefreshTrigger = attrs.field(validator=_trigger)
    #: Families refreshed; empty means all of them.
    families: tuple[str, ...] = attrs.field(default=(), validator=_families)
    bridge_version: int = attrs.field(default=0, validator=_non_negative_int)
    added: int = attrs.field(default=0, validator=_non_negative_int)
    removed: int = attrs.field(default=0, validator=_non_negative_int)
    changed: int = attrs.field(default=0, validator=_non_negative_int)
    #: Warm content was identical to what was hot: nothing swapped. Still a success.
    unchanged: bool = attrs.field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        if self.unchanged and (self.added or self.removed or self.changed):
            raise ValueError(
                "unchanged=True requires added, removed and changed to be 0, got "
                f"added={self.added}, removed={self.removed}, changed={self.changed}"
            )
