"""Client-supplied text as it may appear in status messages and log lines.

Two rules, each kept in one function so every caller gets the same treatment:

- :func:`echo` is how a client's value is quoted back (in a status message, an error,
  a log line): its ``repr``, so control characters are escaped, cut to
  :data:`MAX_ECHO_CHARS` characters. A status message travels as HTTP/2 trailer
  metadata, and grpcio refuses trailers over 16 KiB: echoing a 20,000-character id
  whole turned the real INVALID_ARGUMENT or NOT_FOUND into RESOURCE_EXHAUSTED.
- :func:`escape_controls` makes any text one line: the text log formatter applies it
  to every formatted message, so no client string (whatever a log call did with it)
  can start a line that looks like a record of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["MAX_ECHO_CHARS", "clip", "echo", "echo_names", "escape_controls"]

#: Characters of a client value quoted back; a longer value is cut and marked with "…".
MAX_ECHO_CHARS = 120
#: Names listed by :func:`echo_names` before it only counts the rest.
MAX_ECHO_NAMES = 10

# C0 and C1 controls (newline, carriage return, NUL, escape, NEL ...) and the Unicode
# line and paragraph separators: anything a terminal or a log reader may break a line on.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def echo(value: object) -> str:
    """``repr(value)``, cut to its first :data:`MAX_ECHO_CHARS` characters.

    A longer string is shown as its first characters followed by ``…`` and its
    length: ``'xxxx…' (20000 characters)``. Anything else (betterproto2 decodes a
    string sent with another wire type as an int) is its ``repr``, cut the same way.
    The result holds no control character.
    """
    if not isinstance(value, str):
        text = escape_controls(repr(value))
        return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"
    if len(value) <= MAX_ECHO_CHARS:
        return repr(value)
    return f"{value[:MAX_ECHO_CHARS] + '…'!r} ({len(value)} characters)"


def clip(value: object) -> str:
    """``value`` as text, unquoted, in one line and cut like :func:`echo`.

    For messages worded as the original data plane worded them ("Policy not found:
    ID"), where quotes would change the text a person or a script compares with.
    """
    text = escape_controls(value if isinstance(value, str) else repr(value))
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"


def echo_names(names: Sequence[str], *, empty: str = "none") -> str:
    """A comma-separated list of :func:`echo` of the first :data:`MAX_ECHO_NAMES`
    names, then how many more there are; ``empty`` when there are none."""
    if not names:
        return empty
    shown = ", ".join(echo(name) for name in names[:MAX_ECHO_NAMES])
    more = len(names) - MAX_ECHO_NAMES
    return f"{shown} (+{more} more)" if more > 0 else shown


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character and line separator written as an
    escape (``\\n``, ``\\x00``, ``\\u2028`` ...): the result is exactly one line."""
    if _CONTROLS.search(text) is None:  # the common case: no copy
        return text
    return _CONTROLS.sub(_escaped, text)
