"""Errors of the refresh machinery."""

from __future__ import annotations

__all__ = ["RefreshError"]


class RefreshError(Exception):
    """A refresh failed; the hot cache keeps its last good content.

    ``str()`` says why (which file, which check). Raised by
    :meth:`Refresher.refresh`; the periodic scheduler logs it and retries with
    backoff, an RPC handler turns it into an error status.
    """
