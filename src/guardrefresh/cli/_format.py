"""How commands show what the service answered: JSON-ready data and human lines."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any

__all__ = ["human_duration", "message_to_dict", "refresh_summary", "status_lines", "utc_text"]


def message_to_dict(message: Any) -> dict[str, Any]:
    """A generated message as plain JSON-ready data, with the proto's field names.

    Unlike the protobuf JSON mapping, 64-bit integers stay numbers and every field
    is present (an unset sub-message is ``null``).
    """
    return {f.name: _plain(getattr(message, f.name)) for f in dataclasses.fields(message)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return message_to_dict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def utc_text(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def human_duration(seconds: float) -> str:
    """``0.25s``, ``42s``, ``3m 12s``, ``5h 56m``, ``2d 3h``."""
    if seconds < 10:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            rest = (whole % size) // sub_size
            return f"{whole // size}{unit}" + (f" {rest}{sub}" if rest else "")
    if whole >= 60:
        return f"{whole // 60}m" + (f" {whole % 60}s" if whole % 60 else "")
    return f"{whole}s"


def _families(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "all"


def refresh_summary(stats: Any) -> str:
    """One line about a refresh (``RefreshRulesResponse`` or ``RefreshStatsMessage``)."""
    where = f"families: {_families(stats.family_ids)}"
    if stats.unchanged:
        return (
            f"unchanged: the hot cache already matches warm storage ({stats.rules_refreshed} "
            f"rules, {where}); bridge version {stats.bridge_version}, {stats.duration_ms} ms"
        )
    return (
        f"refreshed {stats.rules_refreshed} rules ({where}) in {stats.duration_ms} ms: "
        f"{stats.rules_added} added, {stats.rules_removed} removed, "
        f"{stats.rules_changed} changed; bridge version {stats.bridge_version}"
    )


def status_lines(status: Any, target: str, *, now_ms: int) -> list[str]:
    """The human table of a ``GetRefreshStatusResponse``."""
    if status.last_success_ms:
        last = f"{utc_text(status.last_success_ms)} ({human_duration(status.last_success_age_ms / 1000)} ago)"
    else:
        last = "never"
    if not status.next_refresh_ms:
        next_due = "none scheduled"
    elif status.next_refresh_ms <= now_ms:
        next_due = f"{utc_text(status.next_refresh_ms)} (due now)"
    else:
        wait = human_duration((status.next_refresh_ms - now_ms) / 1000)
        next_due = f"{utc_text(status.next_refresh_ms)} (in {wait})"
    stats = status.last_stats
    last_stats = "-" if stats is None else f"{refresh_summary(stats)}; trigger {stats.trigger}"
    scheduler = ("enabled" if status.scheduler_enabled else "disabled") + (
        ", running" if status.scheduler_running else ", not running"
    )
    backoff = human_duration(status.backoff_s) if status.backoff_s else "none"
    stale = "YES" if status.stale else "no"
    rows = [
        ("last success", last),
        ("next refresh", next_due),
        ("last refresh", last_stats),
        ("consecutive failures", str(status.consecutive_failures)),
        ("last error", status.last_error or "-"),
        ("interval", f"{human_duration(status.current_interval_s)} (backoff: {backoff})"),
        ("scheduler", scheduler),
        ("bridge version", str(status.bridge_version)),
        ("hot rules", f"{status.hot_rules} of capacity {status.hot_capacity}"),
        ("warm rules", str(status.warm_rules)),
        ("stale", f"{stale} (limit {human_duration(status.max_staleness_s)})"),
    ]
    fleet = getattr(status, "replication", None)
    if fleet is not None:
        rows += _replication_rows(fleet)
    width = max(len(name) for name, _ in rows) + 1
    return [f"guardrefresh at {target}"] + [f"  {name + ':':<{width}} {v}" for name, v in rows]


def _replication_rows(fleet: Any) -> list[tuple[str, str]]:
    """Rows of a fleet replica's ``ReplicationStatus``."""
    state = "connected" if fleet.connected else "DISCONNECTED"
    if not fleet.synced:
        state += ", not yet synced (health NOT_SERVING)"
    limit = f"limit {human_duration(fleet.max_lag_s)}" if fleet.max_lag_s else "no limit"
    lag = f"{human_duration(fleet.lag_s)}, {fleet.versions_behind} versions behind ({limit})"
    if fleet.lagging:
        lag += ": LAGGING"
    synced = utc_text(fleet.last_synced_ms) if fleet.last_synced_ms else "never"
    return [
        ("fleet database", fleet.engine),
        ("replication", state),
        ("fleet version", f"{fleet.fleet_version} (local {fleet.local_version})"),
        ("replication lag", lag),
        ("last in sync", synced),
        ("resyncs", f"{fleet.resyncs} (tombstone horizon {fleet.horizon})"),
        ("replication error", fleet.last_error or "-"),
    ]
