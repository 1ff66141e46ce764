"""The one error type of settings: :class:`ConfigError`."""

from __future__ import annotations

__all__ = ["ConfigError"]

# Everything str.splitlines() breaks on, mapped to its backslash escape.
_ESCAPE_LINE_BREAKS = str.maketrans(
    {
        ch: ch.encode("unicode_escape").decode("ascii")
        for ch in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
    }
)


class ConfigError(ValueError):
    """A setting has a bad value, or a configuration source cannot be used.

    ``str()`` is always a single line that names where the bad value came from (the
    setting, the flag, the environment variable or the TOML file and key), the value
    and what is allowed; the command line prints it as is and exits with code 2. Line
    breaks that sneak in through user input (a file name, a parser's message) are
    escaped, so the single-line promise holds whatever the input.

    ``settings`` names (``"section.key"``) the settings the error is about, when it
    is about a combination of them (``backoff_initial`` must not exceed
    ``refresh_interval``): the configuration loader adds where each value came from.
    """

    def __init__(self, message: str, *, settings: tuple[str, ...] = ()) -> None:
        super().__init__(message.translate(_ESCAPE_LINE_BREAKS))
        self.settings = settings

    @property
    def message(self) -> str:
        """The one-line message (same as ``str(self)``)."""
        return str(self.args[0])
