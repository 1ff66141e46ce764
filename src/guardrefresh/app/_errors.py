"""The service's start-up failure."""

from __future__ import annotations

__all__ = ["StartupError"]


class StartupError(Exception):
    """The service could not start; ``str()`` is the one-line reason."""
