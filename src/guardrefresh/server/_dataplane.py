"""The ``rule_installation.DataPlane`` gRPC service.

Handlers run on the asyncio side of the trio-asyncio loop, on the Trio
thread. Reads (GetRule, GetRuleStats, GetRefreshStatus, Enforce with a vector)
touch the bridge directly: no lock, no crossing. Only calls that must await Trio work
(installs, removals, refreshes) cross with ``trio_as_aio``.

Every refusal is a gRPC status with a message a person can act on; a handler
exception never reaches grpclib unmapped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import grpclib.const
import grpclib.server
import trio
import trio_asyncio
from grpclib import GRPCError, Status

from ..bridge import (
    GLOBAL_LAYER,
    Bridge,
    InstallResult,
)
from ..enforce import EnforcementEngine, IntentEncoder
from ..model import (
    Rule,
    check_family_ids,
    clip,
    echo,
    rule_to_proto,
)
from ..proto import rule_installation as pb
from ..refresh import (
    RefreshScheduler,
    RefreshService,
    RefreshTrigger,
    is_stale,
    staleness_limit,
)
from ..replication import ReplicationStatus
from ..telemetry import (
    InvalidQueryError,
    SessionQuery,
    TelemetryStore,
    TelemetryUnavailableError,
)
from ._enforce import EnforceHandler
from ._error_statuses import map_errors as _mapped
from ._install import parse_install_request
from ._messages import replication_message, stats_message, summary_message
from ._raw_messages import RawRequest, RawResponse

logger = logging.getLogger(__name__)

_Msg = TypeVar("_Msg")
_Resp = TypeVar("_Resp")


INSTALL_RULES = "/rule_installation.DataPlane/InstallRules"
ENFORCE = "/rule_installation.DataPlane/Enforce"


class RuleWriter(Protocol):
    """Where installs and removals go: the bridge on a single node, the fleet's
    database in fleet mode (``guardrefresh.replication.FleetWriter``)."""

    async def install_rules(
        self, agent_id: str, rules: Sequence[Rule], *, config_id: str = "", owner: str = ""
    ) -> InstallResult: ...

    async def remove_policy(self, agent_id: str, policy_id: str) -> int: ...

    async def remove_agent_rules(self, agent_id: str) -> int: ...


class DataPlaneService(pb.DataPlaneBase):  # type: ignore[misc]  # generated code is not type-checked
    """Serves the bridge, the refresh service and the scheduler over gRPC."""

    def __init__(
        self,
        bridge: Bridge,
        refresher: RefreshService,
        scheduler: RefreshScheduler,
        *,
        staleness_limit_s: float | None = None,
        wall_clock: Callable[[], float] = time.time,
        telemetry: TelemetryStore | None = None,
        enforcer: EnforceHandler | None = None,
        writer: RuleWriter | None = None,
        replication: Callable[[], ReplicationStatus] | None = None,
    ) -> None:
        #: Decides Enforce requests; by default without a management plane encoder
        #: (requests without a vector are denied, fail-closed).
        self.enforcer = (
            enforcer
            if enforcer is not None
            else EnforceHandler(EnforcementEngine(bridge), IntentEncoder(None, None))
        )
        self._bridge = bridge
        #: Installs and removals: the bridge itself unless in fleet mode.
        self._writer: RuleWriter = writer if writer is not None else bridge
        self._replication = replication
        self._telemetry = telemetry
        self._refresher = refresher
        self._scheduler = scheduler
        self._staleness_limit_s = staleness_limit_s
        self._wall_clock = wall_clock

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = super().__mapping__()
        mapping[INSTALL_RULES] = grpclib.const.Handler(
            self._rpc_install_rules,
            grpclib.const.Cardinality.UNARY_UNARY,
            RawRequest,
            pb.InstallRulesResponse,
        )
        # Enforce answers can carry thousands of evidence entries: parsed and built in
        # C (EnforceHandler.enforce_bytes) instead of betterproto2's pure Python.
        mapping[ENFORCE] = grpclib.const.Handler(
            self._rpc_enforce, grpclib.const.Cardinality.UNARY_UNARY, RawRequest, RawResponse
        )
        return mapping

    async def _rpc_enforce(self, stream: grpclib.server.Stream[RawRequest, RawResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        response = await self.enforce_bytes(request.data)
        await stream.send_message(RawResponse(response))

    async def _rpc_install_rules(
        self, stream: grpclib.server.Stream[RawRequest, pb.InstallRulesResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        response = await self.install_rules_bytes(request.data)
        await stream.send_message(response)

    # -- writes (cross into Trio) ---------------------------------------------
    async def install_rules(self, message: pb.InstallRulesRequest) -> pb.InstallRulesResponse:
        return await self.install_rules_bytes(bytes(message))

    @_mapped
    async def install_rules_bytes(self, data: bytes) -> pb.InstallRulesResponse:
        return await trio_asyncio.trio_as_aio(self._install)(data)

    async def _install(self, data: bytes) -> pb.InstallRulesResponse:
        # Decode, convert and validate everything off the event loop, before
        # anything is stored.
        # Pure work: when the caller is cancelled (drain, deadline) it is simply abandoned.
        request = await trio.to_thread.run_sync(parse_install_request, data, abandon_on_cancel=True)
        if not request.agent_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "agent_id is required")
        result = await self._writer.install_rules(
            request.agent_id, request.rules, config_id=request.config_id, owner=request.owner
        )
        return pb.InstallRulesResponse(
            success=True,
            # Messages as the original data plane wrote them: people read them.
            message=(
                f"Successfully installed {result.rules_installed} rules for agent "
                f"{clip(request.agent_id)}"
            ),
            rules_installed=result.rules_installed,
            rules_by_layer=result.rules_by_layer,
            bridge_version=result.bridge_version,
        )

    @_mapped
    async def remove_agent_rules(
        self, message: pb.RemoveAgentRulesRequest
    ) -> pb.RemoveAgentRulesResponse:
        if not message.agent_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "agent_id is required")
        removed = await trio_asyncio.trio_as_aio(self._writer.remove_agent_rules)(message.agent_id)
        return pb.RemoveAgentRulesResponse(
            success=True,
            message=f"Removed {removed} rules for agent {clip(message.agent_id)}",
            rules_removed=removed,
        )

    @_mapped
    async def remove_policy(self, message: pb.RemovePolicyRequest) -> pb.RemovePolicyResponse:
        if not message.agent_id or not message.policy_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "agent_id and policy_id are required")
        removed = await trio_asyncio.trio_as_aio(self._writer.remove_policy)(
            message.agent_id, message.policy_id
        )
        return pb.RemovePolicyResponse(
            success=True, message=f"Removed policy {clip(message.policy_id)}", rules_removed=removed
        )

    @_mapped
    async def refresh_rules(self, message: pb.RefreshRulesRequest) -> pb.RefreshRulesResponse:
        try:
            families = check_family_ids(message.family_ids)
        except ValueError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        stats = await trio_asyncio.trio_as_aio(self._refresher.refresh)(
            families, trigger=RefreshTrigger.RPC
        )
        return pb.RefreshRulesResponse(
            success=True,
            message=(
                f"Refreshed {stats.rules_refreshed} rules in {round(stats.duration_ms)}ms"
                + (" (unchanged)" if stats.unchanged else "")
            ),
            rules_refreshed=stats.rules_refreshed,
            duration_ms=round(stats.duration_ms),
            timestamp_ms=stats.timestamp_ms,
            bridge_version=stats.bridge_version,
            unchanged=stats.unchanged,
            rules_added=stats.added,
            rules_removed=stats.removed,
            rules_changed=stats.changed,
            trigger=str(stats.trigger),
            family_ids=list(stats.families),
        )

    # -- reads (direct) ----------------------------------------------------------
    @_mapped
    async def get_rule(self, message: pb.GetRuleRequest) -> pb.GetRuleResponse:
        if not message.rule_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "rule_id is required")
        found = self._bridge.get_rule(message.rule_id)
        if found is None:
            raise GRPCError(Status.NOT_FOUND, f"no rule {echo(message.rule_id)}")
        rule, tier = found
        return pb.GetRuleResponse(found=True, rule=rule_to_proto(rule), tier=str(tier))

    @_mapped
    async def get_rule_stats(self, message: pb.GetRuleStatsRequest) -> pb.GetRuleStatsResponse:
        stats = self._bridge.rule_stats()
        return pb.GetRuleStatsResponse(
            bridge_version=stats.bridge_version,
            total_tables=len(stats.tables),
            total_rules=stats.total_rules,
            total_global_rules=stats.total_global_rules,
            total_scoped_rules=stats.total_scoped_rules,
            table_stats=[
                pb.TableStats(
                    family_id=t.family_id,
                    # As the original data plane labels rules without a layer.
                    layer_id=t.layer_id or GLOBAL_LAYER,
                    version=t.version,
                    rule_count=t.rule_count,
                    global_count=t.global_count,
                    scoped_count=t.scoped_count,
                )
                for t in stats.tables
            ],
        )

    @_mapped
    async def get_refresh_status(
        self, message: pb.GetRefreshStatusRequest
    ) -> pb.GetRefreshStatusResponse:
        status = self._scheduler.status()
        last = self._refresher.last_stats.value
        now_ms = int(self._wall_clock() * 1000)
        last_ms = last.timestamp_ms if last is not None else 0
        age_ms = now_ms - last_ms if last_ms else 0
        max_staleness = staleness_limit(self._staleness_limit_s or 0.0, status.current_interval_s)
        stale = is_stale(last_ms, now_ms, max_staleness)
        return pb.GetRefreshStatusResponse(
            scheduler_enabled=status.enabled,
            scheduler_running=status.running,
            last_success_ms=last_ms,
            last_success_age_ms=age_ms,
            next_refresh_ms=status.next_refresh_ms,
            last_stats=stats_message(last),
            consecutive_failures=self._refresher.consecutive_failures,
            last_error=self._refresher.last_error,
            current_interval_s=status.current_interval_s,
            backoff_s=status.backoff_s,
            bridge_version=self._bridge.bridge_version,
            hot_rules=len(self._bridge.cache),
            hot_capacity=self._bridge.cache.capacity,
            warm_rules=len(self._bridge.table),
            stale=stale,
            max_staleness_s=max_staleness,
            replication=(
                replication_message(self._replication()) if self._replication is not None else None
            ),
        )

    @_mapped
    async def enforce(self, message: pb.EnforceRequest) -> pb.EnforceResponse:
        return await self.enforcer.enforce(message)

    @_mapped
    async def enforce_bytes(self, data: bytes) -> bytes:
        return await self.enforcer.enforce_bytes(data)

    # -- telemetry (reads in worker threads, through Trio) ------------------------
    def _telemetry_or_refuse(self) -> TelemetryStore:
        if self._telemetry is None:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                "telemetry is turned off on this data plane (--no-telemetry): "
                "no enforcement sessions are recorded",
            )
        return self._telemetry

    @_mapped
    async def query_telemetry(self, message: pb.QueryTelemetryRequest) -> pb.QueryTelemetryResponse:
        telemetry = self._telemetry_or_refuse()
        try:
            query = SessionQuery(
                agent_id=message.agent_id,
                tenant_id=message.tenant_id,
                decision=message.decision,
                decision_name=message.decision_name,
                layer=message.layer,
                start_time_ms=message.start_time_ms,
                end_time_ms=message.end_time_ms,
                limit=message.limit,
                offset=message.offset,
            )
        except InvalidQueryError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        try:
            page = await trio_asyncio.trio_as_aio(telemetry.query)(query)
        except TelemetryUnavailableError as exc:
            raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
        return pb.QueryTelemetryResponse(
            sessions=[summary_message(s) for s in page.sessions],
            total_count=min(page.total_count, 2**31 - 1),
        )

    @_mapped
    async def get_session(self, message: pb.GetSessionRequest) -> pb.GetSessionResponse:
        telemetry = self._telemetry_or_refuse()
        if not isinstance(message.session_id, str) or not message.session_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "session_id is required")
        try:
            document = await trio_asyncio.trio_as_aio(telemetry.get)(message.session_id)
        except TelemetryUnavailableError as exc:
            raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
        if document is None:
            raise GRPCError(Status.NOT_FOUND, f"Session not found: {clip(message.session_id)}")
        return pb.GetSessionResponse(session_json=document)
