"""What one drain of the gRPC host did (:class:`DrainReport`)."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["DrainReport"]


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class DrainReport:
    """What one drain did. ``in_flight_at_start == completed + cancelled``."""

    #: RPCs running when the drain began (health and reflection streams excluded).
    in_flight_at_start: int = attrs.field(
        validator=[attrs.validators.instance_of(int), _non_negative]
    )
    #: Of those, the ones that answered by themselves before the grace period ended.
    completed: int = attrs.field(validator=[attrs.validators.instance_of(int), _non_negative])
    #: Of those, the ones cancelled at the end of grace; their clients got UNAVAILABLE.
    cancelled: int = attrs.field(validator=[attrs.validators.instance_of(int), _non_negative])
    #: New RPCs answered UNAVAILABLE during the drain.
    rejected: int = attrs.field(validator=[attrs.validators.instance_of(int), _non_negative])
    #: Connections still open at the end, closed by the drain.
    connections_closed: int = attrs.field(
        validator=[attrs.validators.instance_of(int), _non_negative]
    )
    #: From the start of the drain to the last connection closed (Trio clock).
    duration_s: float = attrs.field(validator=[attrs.validators.instance_of(float), _non_negative])

    def __attrs_post_init__(self) -> None:
        if self.completed + self.cancelled != self.in_flight_at_start:
            raise ValueError(
                f"completed ({self.completed}) + cancelled ({self.cancelled}) != "
                f"in_flight_at_start ({self.in_flight_at_start})"
            )
