"""The service log: one stream handler on the root logger, writing to stderr."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

from ..model import escape_controls

__all__ = ["LOG_FORMAT", "JsonFormatter", "TextFormatter", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# h2 and hpack log every frame and header at DEBUG; --log-level DEBUG is meant for
# this service's own loggers.
_CHATTY_LIBRARIES = ("h2", "hpack")


# Attributes every LogRecord has; anything else came in through ``extra=`` and is a
# structured field of the event.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    """:data:`LOG_FORMAT` lines in which a line at column 0 always starts a record.

    Messages carry client-supplied text (rule ids, family names, agent ids); a
    newline in one must not forge a record of its own. So the message, once
    formatted with its arguments, has every control character escaped
    (:func:`~guardrefresh.model.escape_controls`), and the lines of a traceback
    or stack under a record are indented, their control characters escaped too.
    """

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        parts = [escape_controls(self.formatMessage(record))]
        # Not the ``exc_text`` another handler's formatter may have cached on the record.
        if record.exc_info:
            parts.append(_indented(self.formatException(record.exc_info)))
        elif record.exc_text:
            parts.append(_indented(record.exc_text))
        if record.stack_info:
            parts.append(_indented(self.formatStack(record.stack_info)))
        return "\n".join(parts)


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, structured fields.

    Structured fields are whatever the call passed as ``extra=`` (for example
    ``rules``, ``duration_ms``, ``trigger``); values JSON cannot carry become strings.
    """

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, ensure_ascii=False)


class _ServiceLogHandler(logging.StreamHandler[TextIO]):
    """Marks the handler this module installed, so a second call replaces it."""


def configure_logging(
    level: str, *, stream: TextIO | None = None, fmt: str = "text"
) -> logging.Handler:
    """Send log records of *level* and above to *stream* (default: ``sys.stderr``).

    Like :func:`logging.basicConfig`, but calling it again replaces the handler it
    installed before instead of doing nothing, and handlers that others installed on
    the root logger (pytest's, for instance) are left alone. ``fmt`` is ``"text"``
    or ``"json"`` (see :class:`JsonFormatter`). Returns the handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServiceLogHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _ServiceLogHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
    return handler
