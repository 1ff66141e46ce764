"""The running service answers every DataPlane call, to the project's grpclib client and
to grpcio (the reference implementation), with the content it was given.

Real process, sockets on 127.0.0.1 and clock; one service per test (~1 s to start).
"""

from __future__ import annotations

import time
import types
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpclib.const import Status
from support.trio_service import open_service
from support.waiting import in_thread

from guardrefresh.proto import rule_installation as pb

from .service import (
    DATA_PLANE,
    DataPlaneClient,
    GrpclibClient,
    open_grpcio_client,
    open_grpcio_peer,
    open_grpclib_client,
    rule_set,
    stats_rows,
    to_grpcio,
)


async def _install_via_grpclib(
    client: GrpclibClient, agent_id: str, rules: list[pb.RuleInstance]
) -> pb.InstallRulesResponse:
    request = pb.InstallRulesRequest(
        agent_id=agent_id, rules=rules, config_id=f"cfg-{agent_id}", owner="team-e2e"
    )
    response: pb.InstallRulesResponse = await client.call("install_rules", request)
    return response


async def _install_via_grpcio(
    client: DataPlaneClient,
    modules: types.SimpleNamespace,
    agent_id: str,
    rules: list[pb.RuleInstance],
) -> Any:
    request = modules.pb2.InstallRulesRequest(
        agent_id=agent_id,
        rules=[to_grpcio(modules, r) for r in rules],
        config_id=f"cfg-{agent_id}",
        owner="team-e2e",
    )
    return await in_thread(client.call, "InstallRules", request)


async def test_both_clients_install_and_read_back_every_field(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    rules_a = rule_set("agent-a", "a")
    rules_b = rule_set("agent-b", "b", seed=10)
    async with (
        open_service(tmp_path) as service,
        open_grpclib_client(service.port) as aio,
        open_grpcio_client(grpcio_modules, service.port) as rpc,
    ):
        empty = await aio.call("get_rule_stats", pb.GetRuleStatsRequest())
        assert (empty.total_rules, empty.total_tables, empty.table_stats) == (0, 0, [])

        installed_a = await _install_via_grpclib(aio, "agent-a", rules_a)
        assert installed_a.success
        assert installed_a.rules_installed == 4
        assert installed_a.rules_by_layer == {"L1": 2, "L2": 2}
        assert installed_a.bridge_version > empty.bridge_version

        installed_b = await _install_via_grpcio(rpc, grpcio_modules, "agent-b", rules_b)
        assert installed_b.success
        assert installed_b.rules_installed == 4
        assert dict(installed_b.rules_by_layer) == {"L1": 2, "L2": 2}
        assert installed_b.bridge_version > installed_a.bridge_version

        # Each client sees the same tables: per (family, layer) rules, global, scoped.
        stats_aio = await aio.call("get_rule_stats", pb.GetRuleStatsRequest())
        stats_rpc = await in_thread(rpc.call, "GetRuleStats", pb2.GetRuleStatsRequest())
        expected = {("fam-fs", "L2"): (4, 2, 2), ("fam-net", "L1"): (4, 2, 2)}
        assert stats_rows(stats_aio) == stats_rows(stats_rpc) == expected
        for stats in (stats_aio, stats_rpc):
            assert stats.bridge_version == installed_b.bridge_version
            assert (stats.total_tables, stats.total_rules) == (2, 8)
            assert (stats.total_global_rules, stats.total_scoped_rules) == (4, 4)
            assert all(0 < t.version <= installed_b.bridge_version for t in stats.table_stats)

        # Every field comes back as sent, through either client, from the hot tier.
        for sent in rules_a + rules_b:
            got_aio = await aio.call("get_rule", pb.GetRuleRequest(rule_id=sent.rule_id))
            assert (got_aio.found, got_aio.tier) == (True, "hot")
            assert got_aio.rule == sent
            got_rpc = await in_thread(rpc.call, "GetRule", pb2.GetRuleRequest(rule_id=sent.rule_id))
            assert (got_rpc.found, got_rpc.tier) == (True, "hot")
            assert got_rpc.rule == to_grpcio(grpcio_modules, sent)

        # A rule id owned by agent-a cannot be taken over by agent-b.
        conflict = await in_thread(
            rpc.outcome,
            "InstallRules",
            pb2.InstallRulesRequest(
                agent_id="agent-b", rules=[to_grpcio(grpcio_modules, rules_a[0])]
            ),
        )
        assert conflict.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "a-forbidden" in conflict.details
        after = await aio.call("get_rule_stats", pb.GetRuleStatsRequest())
        assert after.bridge_version == installed_b.bridge_version


async def test_tiers_refresh_and_refresh_status(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    rules = rule_set("agent-a", "a") + rule_set("agent-a", "c", seed=20)
    async with (
        open_service(tmp_path, "--hot-capacity", "3") as service,
        open_grpclib_client(service.port) as aio,
        open_grpcio_client(grpcio_modules, service.port) as rpc,
    ):
        installed = await _install_via_grpclib(aio, "agent-a", rules)
        assert installed.rules_installed == 8

        # Only the last three installed fit the hot cache; the first is read from warm
        # storage, which promotes it into the hot tier.
        first = rules[0].rule_id
        cold = await aio.call("get_rule", pb.GetRuleRequest(rule_id=first))
        assert (cold.tier, cold.rule) == ("warm", rules[0])
        again = await in_thread(rpc.call, "GetRule", pb2.GetRuleRequest(rule_id=first))
        assert again.tier == "hot"
        assert again.rule == to_grpcio(grpcio_modules, rules[0])

        before_ms = int(time.time() * 1000)
        full = await aio.call("refresh_rules", pb.RefreshRulesRequest())
        assert full.success
        assert full.rules_refreshed == 3  # the hot capacity
        assert full.bridge_version == installed.bridge_version
        assert (full.trigger, full.family_ids) == ("rpc", [])
        assert before_ms <= full.timestamp_ms <= int(time.time() * 1000)

        scoped = await in_thread(
            rpc.call, "RefreshRules", pb2.RefreshRulesRequest(family_ids=["fam-fs"])
        )
        assert scoped.success
        assert list(scoped.family_ids) == ["fam-fs"]
        assert 1 <= scoped.rules_refreshed <= 3
        assert scoped.trigger == "rpc"
        after_ms = int(time.time() * 1000)

        for status in (
            await aio.call("get_refresh_status", pb.GetRefreshStatusRequest()),
            await in_thread(rpc.call, "GetRefreshStatus", pb2.GetRefreshStatusRequest()),
        ):
            assert before_ms <= status.last_success_ms <= after_ms
            assert status.last_success_ms == status.last_stats.timestamp_ms
            assert status.last_stats.trigger == "rpc"
            assert list(status.last_stats.family_ids) == ["fam-fs"]
            assert status.last_stats.rules_refreshed == scoped.rules_refreshed
            assert status.last_stats.bridge_version == installed.bridge_version
            assert (status.warm_rules, status.hot_rules, status.hot_capacity) == (8, 3, 3)
            assert status.bridge_version == installed.bridge_version
            assert status.scheduler_enabled and status.scheduler_running
            assert status.current_interval_s == 21600.0
            assert status.next_refresh_ms > after_ms
            assert not status.stale
            assert status.consecutive_failures == 0


async def test_remove_policy_and_agent_rules(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    async with (
        open_service(tmp_path) as service,
        open_grpclib_client(service.port) as aio,
        open_grpcio_client(grpcio_modules, service.port) as rpc,
    ):
        await _install_via_grpclib(aio, "agent-a", rule_set("agent-a", "a"))
        installed = await _install_via_grpcio(
            rpc, grpcio_modules, "agent-b", rule_set("agent-b", "b", seed=10)
        )

        removed = await aio.call(
            "remove_policy", pb.RemovePolicyRequest(agent_id="agent-a", policy_id="a-deny")
        )
        assert (removed.success, removed.rules_removed) == (True, 1)
        assert await aio.status("get_rule", pb.GetRuleRequest(rule_id="a-deny")) == (
            Status.NOT_FOUND,
            "no rule 'a-deny'",
        )
        stats = await aio.call("get_rule_stats", pb.GetRuleStatsRequest())
        assert stats.bridge_version > installed.bridge_version
        assert stats_rows(stats) == {("fam-fs", "L2"): (3, 2, 1), ("fam-net", "L1"): (4, 2, 2)}

        # Gone already; never existed: NOT_FOUND; belongs to another agent:
        # FAILED_PRECONDITION; nothing removed. The texts are the original data plane's.
        for agent, policy, code, details in (
            ("agent-a", "a-deny", grpc.StatusCode.NOT_FOUND, "Policy not found: a-deny"),
            ("agent-a", "nope", grpc.StatusCode.NOT_FOUND, "Policy not found: nope"),
            (
                "agent-a",
                "b-allow",
                grpc.StatusCode.FAILED_PRECONDITION,
                "Policy b-allow does not belong to agent agent-a",
            ),
        ):
            missing = await in_thread(
                rpc.outcome,
                "RemovePolicy",
                pb2.RemovePolicyRequest(agent_id=agent, policy_id=policy),
            )
            assert (missing.code, missing.details) == (code, details), (agent, policy)
        still = await in_thread(rpc.call, "GetRule", pb2.GetRuleRequest(rule_id="b-allow"))
        assert still.found

        # Everything agent-b installed or is scoped to goes; agent-a's rules stay.
        gone = await in_thread(
            rpc.call, "RemoveAgentRules", pb2.RemoveAgentRulesRequest(agent_id="agent-b")
        )
        assert (gone.success, gone.rules_removed) == (True, 4)
        stats = await in_thread(rpc.call, "GetRuleStats", pb2.GetRuleStatsRequest())
        assert stats_rows(stats) == {("fam-fs", "L2"): (1, 1, 0), ("fam-net", "L1"): (2, 1, 1)}
        for rule_id in ("b-forbidden", "b-allow", "b-deny", "b-defer"):
            assert (await aio.status("get_rule", pb.GetRuleRequest(rule_id=rule_id)))[0] is (
                Status.NOT_FOUND
            )
        nothing = await aio.call(
            "remove_agent_rules", pb.RemoveAgentRulesRequest(agent_id="agent-nobody")
        )
        assert (nothing.success, nothing.rules_removed) == (True, 0)


async def test_telemetry_calls_as_the_management_plane_sends_them(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    async with (
        open_service(tmp_path) as service,
        open_grpclib_client(service.port) as aio,
        open_grpcio_client(grpcio_modules, service.port) as rpc,
    ):
        # As the management plane sends it: decision=0 is a present filter. Nothing
        # was enforced yet: an empty page.
        page = await in_thread(
            rpc.call, "QueryTelemetry", pb2.QueryTelemetryRequest(decision=0, limit=50)
        )
        assert (list(page.sessions), page.total_count) == ([], 0)
        code, message = await aio.status("get_session", pb.GetSessionRequest(session_id="s"))
        assert code is Status.NOT_FOUND and "Session not found: s" in message
        outcome = await in_thread(rpc.outcome, "GetSession", pb2.GetSessionRequest(session_id="s"))
        assert outcome.code is grpc.StatusCode.NOT_FOUND
        assert (await in_thread(rpc.outcome, "GetRuleStats", pb2.GetRuleStatsRequest())).ok


async def test_health_and_reflection_with_grpcio_clients(tmp_path: Path) -> None:
    async with open_service(tmp_path) as service, open_grpcio_peer(service.port) as peer:
        assert await peer.check("") == "SERVING"
        assert await peer.check(DATA_PLANE) == "SERVING"
        assert await peer.check("no.such.Service") == "NOT_FOUND"

        reflected = await peer.reflect()
        assert DATA_PLANE in reflected["services"]
        assert reflected["file"] == "rule_installation.proto"
        assert reflected["package"] == "rule_installation"
        assert sorted(reflected["methods"]["DataPlane"]) == sorted(
            [
                "InstallRules",
                "RemoveAgentRules",
                "RemovePolicy",
                "GetRuleStats",
                "Enforce",
                "QueryTelemetry",
                "GetSession",
                "RefreshRules",
                "GetRule",
                "GetRefreshStatus",
            ]
        )
        assert reflected["rule_fields"] == [
            "rule_id",
            "family_id",
            "layer",
            "agent_id",
            "priority",
            "enabled",
            "created_at_ms",
            "params",
            "anchors",
            "policy_type",
            "drift_threshold",
            "modification_spec",
            "slice_weights",
        ]


def _padded_rule(
    pb2: Any, rule_id: str, counts: tuple[int, int, int, int], *, layer: str, padding: float
) -> Any:
    """A RuleInstance laid out as the Guard management plane sends one (grpcio message).

    Its encoder fills a zeroed 16 x 32 block per slot with the real anchors and sends
    all 16 rows, with ``*_count`` = the real anchors. ``padding`` != 0 checks that
    whatever is sent in the padding rows is kept.
    """
    rng = np.random.default_rng(len(rule_id))
    payload = pb2.RuleAnchorsPayload()
    for slot, count in zip(("action", "resource", "data", "risk"), counts, strict=True):
        block = np.full((16, 32), padding, dtype=np.float32)
        block[:count] = rng.standard_normal((count, 32)).astype(np.float32)
        getattr(payload, f"{slot}_anchors").extend(
            pb2.AnchorVector(values=list(row)) for row in block
        )
        setattr(payload, f"{slot}_count", count)
    rule = pb2.RuleInstance(
        rule_id=rule_id,
        family_id="",
        layer=layer,
        agent_id="tenant-1",
        priority=10,
        enabled=True,
        created_at_ms=1_700_000_000_000,
        anchors=payload,
        policy_type="context_deny",
        drift_threshold=0.0,
        modification_spec="",
        slice_weights=[0.25, 0.25, 0.25, 0.25],
    )
    rule.params["rule_type"].string_value = "design_boundary"
    rule.params["rule_decision"].string_value = "min"
    rule.params["thresholds"].string_value = '{"action": 0.8}'
    return rule


async def test_padded_anchors_install_and_read_back_as_sent(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    sent = [
        _padded_rule(pb2, "zero-padded", (1, 0, 2, 16), layer="", padding=0.0),
        _padded_rule(pb2, "nonzero-padded", (3, 1, 0, 0), layer="L4", padding=0.125),
    ]
    request = pb2.InstallRulesRequest(
        agent_id="tenant-1", rules=sent, config_id="design_boundary_v2", owner="management_plane"
    )
    async with (
        open_service(tmp_path) as service,
        open_grpcio_client(grpcio_modules, service.port) as rpc,
    ):
        installed = await in_thread(rpc.call, "InstallRules", request)
        assert (installed.success, installed.rules_installed) == (True, 2)
        # Rules without a layer count under "global", as the original data plane reported.
        assert dict(installed.rules_by_layer) == {"global": 1, "L4": 1}
        assert installed.message == "Successfully installed 2 rules for agent tenant-1"
        stats = await in_thread(rpc.call, "GetRuleStats", pb2.GetRuleStatsRequest())
        assert stats_rows(stats) == {("", "global"): (1, 0, 1), ("", "L4"): (1, 0, 1)}
        for rule in sent:
            got = await in_thread(rpc.call, "GetRule", pb2.GetRuleRequest(rule_id=rule.rule_id))
            assert (got.found, got.tier) == (True, "hot")
            assert got.rule == rule
            assert len(got.rule.anchors.risk_anchors) == 16
        assert await service.stop() == 0
    # After a restart the rules come from warm storage, padding and counts intact.
    async with (
        open_service(tmp_path) as service,
        open_grpcio_client(grpcio_modules, service.port) as rpc,
    ):
        for rule in sent:
            got = await in_thread(rpc.call, "GetRule", pb2.GetRuleRequest(rule_id=rule.rule_id))
            assert got.found and got.rule == rule
