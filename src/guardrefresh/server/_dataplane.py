"""The ``rule_installation.DataPlane`` gRPC service.

Handlers run on the asyncio side of the trio-asyncio loop, on the Trio
thread. Reads (GetRule, GetRuleStats, GetRefreshStatus, Enforce with a vector)
touch the bridge directly: no lock, no crossing. Only calls that must await Trio work
(installs, removals, refreshes) cross with ``trio_as_aio``.

Every refusal is a gRPC status with a message a person can act on; a handler
exception never reaches grpclib unmapped.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpclib.const
import grpclib.server
import trio
import trio_asyncio
from grpclib import GRPCError, Status

from ..bridge import (
    GLOBAL_LAYER,
    Bridge,
    InstallResult,
    RuleConflictError,
    RuleNotFoundError,
    TooManyRulesError,
)
from ..enforce import EnforcementEngine, IntentEncoder
from ..model import (
    Rule,
    RuleValidationError,
    check_family_ids,
    clip,
    echo,
    rule_from_proto,
    rule_to_proto,
)
from ..proto import rule_installation as pb
from ..refresh import (
    RefreshError,
    RefreshScheduler,
    RefreshService,
    RefreshStats,
    RefreshTrigger,
    is_stale,
    staleness_limit,
)
from ..replication import ReplicationError, ReplicationStatus
from ..storage import StorageError
from ..telemetry import (
    InvalidQueryError,
    SessionQuery,
    SessionSummary,
    TelemetryStore,
    TelemetryUnavailableError,
)
from ._enforce import EnforceHandler

logger = logging.getLogger(__name__)

_Msg = TypeVar("_Msg")
_Resp = TypeVar("_Resp")


def _mapped(
    handler: Callable[[Any, _Msg], Awaitable[_Resp]],
) -> Callable[[Any, _Msg], Awaitable[_Resp]]:
    """Turn domain errors into gRPC statuses; log and hide anything unexpected."""

    @functools.wraps(handler)
    async def wrapper(self: Any, message: _Msg) -> _Resp:
        try:
            return await handler(self, message)
        except GRPCError:
            raise
        except RuleValidationError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        except TooManyRulesError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        except RuleNotFoundError as exc:
            raise GRPCError(Status.NOT_FOUND, str(exc)) from None
        except RuleConflictError as exc:
            raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None
        except StorageError as exc:
            # Otherwise an operator would see a failing write only at the client;
            # refresh failures are logged by the refresh service itself.
            logger.warning("%s failed, answered UNAVAILABLE: %s", handler.__name__, exc)
            raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
        except RefreshError as exc:
            raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
        except ReplicationError as exc:
            # Fleet mode: the database is unreachable, or this replica is behind.
            logger.warning("%s failed, answered UNAVAILABLE: %s", handler.__name__, exc)
            raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
        except Exception:
            logger.exception("Unhandled error in %s", handler.__name__)
            raise GRPCError(
                Status.INTERNAL, f"internal error in {handler.__name__}; see server log"
            ) from None

    return wrapper


INSTALL_RULES = "/rule_installation.DataPlane/InstallRules"
ENFORCE = "/rule_installation.DataPlane/Enforce"


class RawRequest:
    """A request grpclib hands over undecoded (its codec calls ``FromString``).

    A large InstallRules takes seconds of pure-Python parsing; doing that on the
    event loop would stall every other call, health probes and signal handling.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> RawRequest:  # the codec's protocol
        return cls(data)

    def SerializeToString(self) -> bytes:
        return self.data


class RawResponse(RawRequest):
    """A response the handler has serialized itself (grpclib's codec sends the bytes)."""

    __slots__ = ()


def parse_install_request(data: bytes) -> tuple[pb.InstallRulesRequest, list[Rule]]:
    """Decode and validate an InstallRules request (runs in a worker thread)."""
    try:
        message = pb.InstallRulesRequest.parse(data)
    except Exception as exc:  # betterproto2 raises assorted errors on malformed bytes
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed InstallRulesRequest: {exc}") from None
    rules = []
    for index, r in enumerate(message.rules):
        try:
            rule = rule_from_proto(
                r, installed_by=message.agent_id, config_id=message.config_id, owner=message.owner
            )
        except (AttributeError, TypeError) as exc:
            # betterproto2 decodes a field sent with another wire type as an int or None
            # rather than failing: malformed input, not a bug to log with a traceback.
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"malformed InstallRulesRequest: rules[{index}]: {exc}"
            ) from None
        rules.append(rule)
    return message, rules


class RuleWriter(Protocol):
    """Where installs and removals go: the bridge on a single node, the fleet's
    database in fleet mode (``guardrefresh.replication.FleetWriter``)."""

    async def install_rules(
        self, agent_id: str, rules: Sequence[Rule], *, config_id: str = "", owner: str = ""
    ) -> InstallResult: ...

    async def remove_policy(self, agent_id: str, policy_id: str) -> int: ...

    async def remove_agent_rules(self, agent_id: str) -> int: ...


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
        message, rules = await trio.to_thread.run_sync(
            parse_install_request, data, abandon_on_cancel=True
        )
        if not message.agent_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "agent_id is required")
        result = await self._writer.install_rules(
            message.agent_id, rules, config_id=message.config_id, owner=message.owner
        )
        return pb.InstallRulesResponse(
            success=True,
            # Messages as the original data plane wrote them: people read them.
            message=(
                f"Successfully installed {result.rules_installed} rules for agent "
                f"{clip(message.agent_id)}"
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
