"""Process limits the service sets for itself at start: open file descriptors."""

from __future__ import annotations

import logging
import resource

__all__ = ["raise_fd_limit"]

logger = logging.getLogger(__name__)


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit in force.

    systemd and most shells start services with a soft limit of 1,024 and a much
    higher hard one; every client connection holds a descriptor, so the soft limit
    is what caps the connections the service can take. Raising it to the hard limit
    needs no privilege. If the kernel refuses (an infinite hard limit above the
    kernel's ``nr_open``), the soft limit stays as it was. Logs the limit in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.warning(
                "Open-file limit stays at %s: raising it to the hard limit %s failed: %s",
                _text(soft),
                _text(hard),
                exc,
            )
            return soft
        soft = hard
    logger.info("Open-file limit (RLIMIT_NOFILE): %s", _text(soft))
    return soft


def _text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
