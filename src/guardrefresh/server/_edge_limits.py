"""The bounds of the connection layer (:class:`EdgeLimits`) and what it did (:class:`EdgeCounts`)."""

from __future__ import annotations

import resource
from typing import Any

import attrs

__all__ = [
    "FD_RESERVE",
    "MIN_DERIVED_CONNECTIONS",
    "EdgeCounts",
    "EdgeLimits",
    "max_connections_for",
]

#: Descriptors kept back from connections for everything else the process opens:
#: the store's files and journal, the metrics endpoint and its scrapers, the loop's
#: own pipes, logging, telemetry. About 20 are in use at rest (the soak's floor).
FD_RESERVE = 64
#: The cap derived from a descriptor limit never goes below this.
MIN_DERIVED_CONNECTIONS = 16


def max_connections_for(fd_limit: int) -> int:
    """The default connection cap for a soft ``RLIMIT_NOFILE`` of ``fd_limit``:
    ``max(16, fd_limit - 64)`` (:data:`FD_RESERVE` descriptors stay for the rest)."""
    if fd_limit == resource.RLIM_INFINITY or fd_limit < 0:
        fd_limit = 1 << 20  # Linux's default nr_open: no process can have more
    return max(MIN_DERIVED_CONNECTIONS, fd_limit - FD_RESERVE)


def _current_fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class EdgeLimits:
    """Bounds of the connection layer; the defaults are the service's."""

    #: Connections open at once; more are closed when accepted. Default: derived
    #: from the process's descriptor limit when the limits are made
    #: (:func:`max_connections_for`).
    max_connections: int = attrs.field(
        factory=lambda: max_connections_for(_current_fd_limit()),
        validator=[attrs.validators.instance_of(int), _positive],
    )
    #: Seconds without an open stream before a connection is closed; ``math.inf``: never.
    idle_timeout_s: float = attrs.field(default=300.0, converter=float, validator=_positive)
    #: Client stream resets a connection may send at once (token bucket size).
    reset_burst: int = attrs.field(
        default=1000, validator=[attrs.validators.instance_of(int), _positive]
    )
    #: Resets per second the bucket refills with.
    reset_rate: float = attrs.field(default=33.0, converter=float, validator=_positive)
    #: Bytes of output a client may leave unread while it keeps sending.
    max_unread_output_bytes: int = attrs.field(
        default=1024 * 1024, validator=[attrs.validators.instance_of(int), _positive]
    )


@attrs.define
class EdgeCounts:
    """What the guard did since the host started."""

    #: Connections closed at once because :attr:`EdgeLimits.max_connections` were open.
    refused: int = 0
    #: Connections closed after :attr:`EdgeLimits.idle_timeout_s` without a stream.
    idle_closed: int = 0
    #: Connections closed for too many stream resets or too much unread output.
    calm_closed: int = 0
    #: Connections closed because handling them raised.
    error_closed: int = 0
