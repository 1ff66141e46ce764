"""The service log: one stream handler on the root logger, writing to stderr."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# h2 and hpack log every frame and header at DEBUG; --log-level DEBUG is meant for
# this service's own loggers.
_CHATTY_LIBRARIES = ("h2", "hpack")


class _ServiceLogHandler(logging.StreamHandler[TextIO]):
    """Marks the handler this module installed, so a second call replaces it."""


def configure_logging(level: str, *, stream: TextIO | None = None) -> logging.Handler:
    """Send log records of *level* and above to *stream* (default: ``sys.stderr``).

    Like :func:`logging.basicConfig`, but calling it again replaces the handler it
    installed before instead of doing nothing, and handlers that others installed on
    the root logger (pytest's, for instance) are left alone. Returns the handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServiceLogHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _ServiceLogHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
    return handler
