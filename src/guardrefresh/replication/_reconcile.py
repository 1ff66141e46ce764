"""The periodic refresh of a fleet replica: :class:`ReconcilingRefresher`."""

from __future__ import annotations

from collections.abc import Sequence

import trio_util

from ..refresh import RefreshError, RefreshService, RefreshStats, RefreshTrigger
from ._errors import ReplicationError
from ._replica import Replica

__all__ = ["ReconcilingRefresher"]


class ReconcilingRefresher:
    """A :class:`~guardrefresh.refresh.Refresher` for the scheduler in fleet mode.

    A periodic refresh first reconciles with the fleet (pull, then compare version,
    count and digest sum of the rules with the database's; resync on a mismatch),
    then refreshes the hot cache from warm storage as on a single node. Other
    triggers only refresh. A reconciliation that cannot reach the database fails the
    refresh (:class:`~guardrefresh.refresh.RefreshError`): the scheduler's backoff,
    log line and failure metrics apply.
    """

    def __init__(self, replica: Replica, refresher: RefreshService) -> None:
        self._replica = replica
        self._refresher = refresher

    @property
    def last_stats(self) -> trio_util.AsyncValue[RefreshStats | None]:
        return self._refresher.last_stats

    async def refresh(
        self, families: Sequence[str] = (), *, trigger: RefreshTrigger = RefreshTrigger.MANUAL
    ) -> RefreshStats:
        if trigger is RefreshTrigger.PERIODIC:
            try:
                await self._replica.reconcile()
            except ReplicationError as exc:
                raise RefreshError(f"reconciliation with the fleet failed: {exc}") from exc
        return await self._refresher.refresh(families, trigger=trigger)
