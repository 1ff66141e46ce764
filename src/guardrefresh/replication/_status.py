"""A snapshot of a replica's replication state: :class:`ReplicationStatus`."""

from __future__ import annotations

import attrs

__all__ = ["ReplicationStatus"]


@attrs.frozen(kw_only=True)
class ReplicationStatus:
    """What status, health and metrics show about a fleet replica."""

    #: The database, its password masked.
    engine: str
    #: Connected and listening for changes.
    connected: bool
    #: The first sync since start is done (health stays NOT_SERVING before it).
    synced: bool
    #: The newest version the fleet is known to hold.
    fleet_version: int
    #: The version of this replica's warm storage.
    local_version: int
    #: Seconds since the oldest change not applied here was made (0 when caught up);
    #: while disconnected, seconds since this replica was last known up to date.
    lag_s: float
    #: --max-replication-lag; 0 = no limit.
    max_lag_s: float
    #: Wall clock ms of the last time this replica was known up to date; 0 = never.
    last_synced_ms: int
    resyncs: int
    last_error: str
    horizon: int

    @property
    def versions_behind(self) -> int:
        return max(0, self.fleet_version - self.local_version)

    @property
    def lagging(self) -> bool:
        """Behind by more than --max-replication-lag (never without a limit)."""
        return self.max_lag_s > 0 and self.lag_s > self.max_lag_s
