"""Errors of configuration loading: :class:`ConfigError` and :class:`UsageError`."""

from __future__ import annotations

from ..settings import ConfigError

__all__ = ["ConfigError", "UsageError"]


class UsageError(ConfigError):
    """The command line itself is malformed: an unknown flag, a flag without its value."""
