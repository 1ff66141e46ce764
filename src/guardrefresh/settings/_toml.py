"""Writing TOML strings and keys (``--print-config``).

Hand-written rather than taken from a TOML writer library because the output must be
pure ASCII (any terminal or pipe encoding can carry it) and only strings and keys need
quoting: numbers and booleans are written by each kind of setting.
"""

from __future__ import annotations

import re

__all__ = ["toml_key", "toml_string"]


def toml_string(text: str) -> str:
    """*text* as a TOML basic string; pure ASCII, so any output encoding can carry it."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    out.append('"')
    return "".join(out)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    """*key* as written in TOML: bare when it may be, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)
