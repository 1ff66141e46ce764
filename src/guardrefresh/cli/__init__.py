"""Command line entry point (``python -m guardrefresh`` and ``guardrefresh``)."""

from ._main import main

__all__ = ["main"]
