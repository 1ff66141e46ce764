"""The interface the scheduler drives: :class:`Refresher`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio_util

from ._stats import RefreshStats, RefreshTrigger

__all__ = ["Refresher"]


class Refresher(Protocol):
    """Something that reloads the hot cache from warm storage on request.

    Implemented by :class:`~guardrefresh.refresh.RefreshService`; consumed by
    :class:`~guardrefresh.refresh.RefreshScheduler`.
    """

    @property
    def last_stats(self) -> trio_util.AsyncValue[RefreshStats | None]:
        """Stats of the latest successful refresh, whatever its trigger.

        ``None`` until the first success. Set after every successful refresh,
        so observers (the scheduler) can react to refreshes they did not start.
        """
        ...

    async def refresh(
        self, families: Sequence[str] = (), *, trigger: RefreshTrigger = RefreshTrigger.MANUAL
    ) -> RefreshStats:
        """Reload ``families`` (empty = all) from warm storage and swap them in.

        Raises :class:`~guardrefresh.refresh.RefreshError` on failure; the hot
        cache then keeps its last good content. On cancellation no partial swap
        is visible.
        """
        ...
