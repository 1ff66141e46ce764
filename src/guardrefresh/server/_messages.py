"""Our state as the generated response messages of GetRefreshStatus and QueryTelemetry."""

from __future__ import annotations

from ..proto import rule_installation as pb
from ..refresh import RefreshStats
from ..replication import ReplicationStatus
from ..telemetry import SessionSummary

__all__ = ["replication_message", "stats_message", "summary_message"]


def replication_message(status: ReplicationStatus) -> pb.ReplicationStatus:
    return pb.ReplicationStatus(
        engine=status.engine,
        connected=status.connected,
        synced=status.synced,
        fleet_version=status.fleet_version,
        local_version=status.local_version,
        versions_behind=status.versions_behind,
        lag_s=status.lag_s,
        max_lag_s=status.max_lag_s,
        lagging=status.lagging,
        last_synced_ms=status.last_synced_ms,
        resyncs=status.resyncs,
        last_error=status.last_error,
        horizon=status.horizon,
    )


def stats_message(stats: RefreshStats | None) -> pb.RefreshStatsMessage | None:
    if stats is None:
        return None
    return pb.RefreshStatsMessage(
        rules_refreshed=stats.rules_refreshed,
        duration_ms=round(stats.duration_ms),
        timestamp_ms=stats.timestamp_ms,
        trigger=str(stats.trigger),
        family_ids=list(stats.families),
        bridge_version=stats.bridge_version,
        rules_added=stats.added,
        rules_removed=stats.removed,
        rules_changed=stats.changed,
        unchanged=stats.unchanged,
    )


def summary_message(summary: SessionSummary) -> pb.EnforcementSessionSummary:
    return pb.EnforcementSessionSummary(
        session_id=summary.session_id,
        agent_id=summary.agent_id,
        tenant_id=summary.tenant_id,
        layer=summary.layer,
        timestamp_ms=summary.timestamp_ms,
        final_decision=summary.final_decision,
        rules_evaluated_count=summary.rules_evaluated_count,
        duration_us=summary.duration_us,
        intent_summary=summary.intent_summary,
        decision_name=summary.decision_name,
        deciding_rule_id=summary.deciding_rule_id,
    )
