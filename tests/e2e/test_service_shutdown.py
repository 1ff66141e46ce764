"""Stopping the service: restart durability, SIGTERM with calls in flight, the grace
period, and health during the drain. Real processes, signals, sockets and clock.

How calls are made to be in flight when SIGTERM arrives, honestly (no test hook in the
service) and without betting on how fast this machine is: a
:class:`~service.HeldCall` sends its request headers and holds the message back, like a
client on a slow link: the server has started the call and waits. A GetRuleStats
answered on the same connection afterwards proves the server has seen those headers.
The message then goes out during the drain, so the server's work on it (decoding a
big InstallRules in a worker thread, committing it, loading a refresh) happens while
the service shuts down.

The service's own log line ``Received SIGTERM: draining (grace ..., N RPCs in flight)``
is checked too, so a test whose calls were not in flight fails rather than passing
vacuously.
"""

from __future__ import annotations

import re
import signal
import socket
import time
import types
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from support.trio_service import TrioService, open_service
from support.waiting import in_thread

from guardrefresh.proto import rule_installation as pb
from guardrefresh.server import SHUTDOWN_MESSAGE
from guardrefresh.storage import WarmStore

from .service import (
    DATA_PLANE,
    HOST,
    DataPlaneClient,
    GrpclibClient,
    big_install_request,
    open_grpcio_client,
    open_grpcio_peer,
    open_grpclib_client,
    rule_set,
    to_grpcio,
)

#: Rules in the big InstallRules: ~2 MB on the wire, about 0.4 s of server work here.
BIG_INSTALL_RULES = 250
#: The install a drain cuts off: ~8 MB, over a second of server work here, against a
#: grace period of 0.05 s (a machine 20 times faster would still be cut off).
CUT_OFF_RULES = 1000
CUT_OFF_GRACE_S = 0.05
BIG_MESSAGE_FLAGS = ("--max-message-bytes", str(16 * 1024 * 1024))
SIGTERM_LINE = re.compile(r"Received SIGTERM: draining \(grace \S+s, (?P<n>\d+) RPCs in flight\)")


async def _in_flight_at_sigterm(service: TrioService) -> int:
    return int((await service.wait_for_log(SIGTERM_LINE))["n"])


async def _held_until_seen(client: GrpclibClient) -> None:
    """Barrier: a call answered on the same connection after a held call's headers.

    The server processes a connection's frames in order, so it has started the held
    call by then. It counts the barrier call itself as in flight until the call's task
    ends, a moment after the answer went out: give it that moment (the server is idle).
    """
    await client.call("get_rule_stats", pb.GetRuleStatsRequest())
    await trio.sleep(0.2)


async def _probe_while_running(probe: DataPlaneClient, outcomes: dict[str, Any]) -> int:
    """Health-check the server until the install is answered; return how many answered.

    Decoding happens off the event loop, so a large request never stalls probes,
    other calls or signal handling: each check must answer within 0.3 s.
    """
    answered = 0
    with trio.fail_after(60):
        while "install" not in outcomes:
            assert await in_thread(probe.health_responds, 0.3), "event loop stalled by the install"
            answered += 1
    return answered


async def _load_store(path: Path) -> tuple[int, int]:
    """(rules, bridge version) of the warm storage at ``path``, read and verified anew."""

    def load() -> tuple[int, int]:
        store = WarmStore(path)
        try:
            table = store.load()
            return len(table), table.bridge_version
        finally:
            store.close()

    return await trio.to_thread.run_sync(load)


async def test_restart_keeps_every_rule_field_for_field(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    rules = rule_set("agent-a", "a") + rule_set("agent-b", "b", seed=10)
    sent = {r.rule_id: r for r in rules}
    ids = list(sent)
    async with (
        open_service(tmp_path) as first,
        open_grpclib_client(first.port) as aio,
        open_grpcio_client(grpcio_modules, first.port) as rpc,
    ):
        await aio.call("install_rules", pb.InstallRulesRequest(agent_id="agent-a", rules=rules[:4]))
        await in_thread(
            rpc.call,
            "InstallRules",
            pb2.InstallRulesRequest(
                agent_id="agent-b", rules=[to_grpcio(grpcio_modules, r) for r in rules[4:]]
            ),
        )
        # A deletion too, so that the journal replays removals as well as upserts.
        await aio.call(
            "remove_policy", pb.RemovePolicyRequest(agent_id="agent-b", policy_id="b-deny")
        )
        ids.remove("b-deny")
        before = {
            i: await in_thread(rpc.call, "GetRule", pb2.GetRuleRequest(rule_id=i)) for i in ids
        }
        stats_before = await in_thread(rpc.call, "GetRuleStats", pb2.GetRuleStatsRequest())
        assert stats_before.total_rules == 7
        assert await first.stop() == 0

    async with (
        open_service(tmp_path) as second,
        open_grpcio_client(grpcio_modules, second.port) as rpc,
    ):
        for rule_id in ids:
            after = await in_thread(rpc.call, "GetRule", pb2.GetRuleRequest(rule_id=rule_id))
            # Whole responses: every rule field, and the tier (the warm-up made them hot).
            assert after == before[rule_id], rule_id
            assert after.rule == to_grpcio(grpcio_modules, sent[rule_id])
        gone = await in_thread(rpc.outcome, "GetRule", pb2.GetRuleRequest(rule_id="b-deny"))
        assert gone.code is grpc.StatusCode.NOT_FOUND
        stats_after = await in_thread(rpc.call, "GetRuleStats", pb2.GetRuleStatsRequest())
        assert stats_after.bridge_version == stats_before.bridge_version > 0
        assert stats_after == stats_before  # per-table versions and counts too
        status = await in_thread(rpc.call, "GetRefreshStatus", pb2.GetRefreshStatusRequest())
        assert status.last_stats.trigger == "startup"
        assert status.bridge_version == stats_before.bridge_version
        assert status.hot_rules == status.warm_rules == 7
        # Versions go on from where they were.
        more = await in_thread(
            rpc.call,
            "InstallRules",
            pb2.InstallRulesRequest(
                agent_id="agent-c", rules=[to_grpcio(grpcio_modules, rule_set("agent-c", "c")[0])]
            ),
        )
        assert more.bridge_version > stats_before.bridge_version
        assert await second.stop() == 0


async def test_an_answered_install_survives_sigkill(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    rules = rule_set("agent-a", "a")
    async with open_service(tmp_path) as service, open_grpclib_client(service.port) as aio:
        installed = await aio.call(
            "install_rules", pb.InstallRulesRequest(agent_id="agent-a", rules=rules)
        )
        removed = await aio.call(
            "remove_policy", pb.RemovePolicyRequest(agent_id="agent-a", policy_id="a-deny")
        )
        assert removed.rules_removed == 1
        # No drain, no working-set save: only what was durable when it answered.
        assert await service.stop(signal.SIGKILL) == -signal.SIGKILL
    rules_stored, version = await _load_store(service.warm_storage)
    assert rules_stored == 3
    assert version > installed.bridge_version

    async with (
        open_service(tmp_path) as again,
        open_grpcio_client(grpcio_modules, again.port) as rpc,
    ):
        pb2 = grpcio_modules.pb2
        for rule in rules:
            got = await in_thread(rpc.outcome, "GetRule", pb2.GetRuleRequest(rule_id=rule.rule_id))
            if rule.rule_id == "a-deny":
                assert got.code is grpc.StatusCode.NOT_FOUND
            else:
                assert got.ok and got.response.rule == to_grpcio(grpcio_modules, rule)
        assert await again.stop() == 0


async def test_sigterm_lets_an_install_and_a_refresh_in_flight_complete(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    big = big_install_request(grpcio_modules, "agent-bulk", BIG_INSTALL_RULES).SerializeToString()
    async with (
        open_service(tmp_path, *BIG_MESSAGE_FLAGS, "--shutdown-grace", "30") as service,
        open_grpclib_client(service.port) as aio,
        open_grpcio_client(grpcio_modules, service.port) as probe,
    ):
        base = await aio.call(
            "install_rules",
            pb.InstallRulesRequest(agent_id="agent-a", rules=rule_set("agent-a", "a")),
        )
        await in_thread(probe.health_responds, 5.0)  # opens the probe's connection
        outcomes: dict[str, pb.InstallRulesResponse] = {}
        async with (
            aio.held_call("InstallRules", pb.InstallRulesResponse, deadline_s=120) as install,
            aio.held_call("RefreshRules", pb.RefreshRulesResponse) as refresh,
            trio.open_nursery() as nursery,
        ):
            await install.send_headers()
            await refresh.send_headers()
            await _held_until_seen(aio)
            service.send_signal(signal.SIGTERM)
            assert await _in_flight_at_sigterm(service) == 2

            # Both do their work only now, during the drain.
            async def finish_install() -> None:
                outcomes["install"] = await install.finish(big)

            nursery.start_soon(finish_install)
            probes = await _probe_while_running(probe, outcomes)
            refreshed = await refresh.finish(pb.RefreshRulesRequest())
        installed = outcomes["install"]
        assert installed.success
        assert installed.rules_installed == BIG_INSTALL_RULES
        assert refreshed.success
        # The refresh loaded a consistent store: before the install or after it.
        if refreshed.bridge_version == installed.bridge_version:
            assert refreshed.rules_refreshed == 4 + BIG_INSTALL_RULES
        else:
            assert refreshed.bridge_version == base.bridge_version
            assert refreshed.rules_refreshed == 4

        assert await service.wait_exit() == 0
        assert service.find(r"drain 4/6: .*: 2 of 2 RPCs completed, 0 still running") is not None
        print(f"health answered {probes} times while the install was decoded and stored")

    assert await _load_store(service.warm_storage) == (
        4 + BIG_INSTALL_RULES,
        installed.bridge_version,
    )


async def test_call_outliving_the_grace_period_gets_unavailable(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    big = big_install_request(grpcio_modules, "agent-bulk", CUT_OFF_RULES).SerializeToString()
    deadline_s = 60.0
    async with (
        open_service(
            tmp_path, *BIG_MESSAGE_FLAGS, "--shutdown-grace", str(CUT_OFF_GRACE_S)
        ) as service,
        open_grpclib_client(service.port) as aio,
    ):
        base = await aio.call(
            "install_rules",
            pb.InstallRulesRequest(agent_id="agent-a", rules=rule_set("agent-a", "a")),
        )
        async with aio.held_call(
            "InstallRules", pb.InstallRulesResponse, deadline_s=deadline_s
        ) as install:
            await install.send_headers()
            await _held_until_seen(aio)
            service.send_signal(signal.SIGTERM)
            assert await _in_flight_at_sigterm(service) == 1
            # The message goes out only now: the server's work on it (about 1.5 s here)
            # starts during the drain and cannot end within the grace period.
            start = time.monotonic()
            with pytest.raises(GRPCError) as refused:
                await install.finish(big)
            elapsed = time.monotonic() - start
        assert refused.value.status is Status.UNAVAILABLE
        assert refused.value.message == SHUTDOWN_MESSAGE
        assert elapsed < deadline_s / 3
        assert await service.wait_exit() == 0
        assert service.find(r"drain 5/6: cancelled 1 RPCs with UNAVAILABLE") is not None

    # All or nothing: the cut-off install is either wholly stored or not at all.
    rules, version = await _load_store(service.warm_storage)
    assert rules in (4, 4 + CUT_OFF_RULES)
    assert (rules == 4) == (version == base.bridge_version)


async def test_health_is_not_serving_during_the_drain(tmp_path: Path) -> None:
    async with (
        open_service(tmp_path, "--shutdown-grace", "30") as service,
        open_grpcio_peer(service.port) as peer,
        open_grpclib_client(service.port) as aio,
    ):
        assert await peer.check("") == "SERVING"  # also opens the peer's connection
        await peer.start_watch("")
        assert await peer.next_watch() == "SERVING"
        async with aio.held_call("RefreshRules", pb.RefreshRulesResponse) as refresh:
            await refresh.send_headers()
            await _held_until_seen(aio)
            service.send_signal(signal.SIGTERM)
            assert await _in_flight_at_sigterm(service) == 1

            # The held call keeps the drain open: health says NOT_SERVING meanwhile.
            assert await peer.next_watch() == "NOT_SERVING"
            assert await peer.check("") == "NOT_SERVING"
            assert await peer.check(DATA_PLANE) == "NOT_SERVING"
            # New calls on an open connection are refused; new connections too.
            assert await aio.status("get_rule_stats", pb.GetRuleStatsRequest()) == (
                Status.UNAVAILABLE,
                SHUTDOWN_MESSAGE,
            )
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((HOST, service.port), timeout=5).close()
            assert service.returncode is None

            refreshed = await refresh.finish(pb.RefreshRulesRequest())
            assert refreshed.success
        assert await service.wait_exit() == 0
        # The Watch stream ends with the service (its deadline is 60 s away), no hang.
        assert await peer.next_watch() in ("END OK", "END UNAVAILABLE")


async def test_second_sigterm_cuts_the_grace_period_short(tmp_path: Path) -> None:
    async with open_service(tmp_path, "--shutdown-grace", "120") as service:
        async with (
            open_grpclib_client(service.port) as aio,
            aio.held_call("RefreshRules", pb.RefreshRulesResponse, deadline_s=60) as refresh,
        ):
            await refresh.send_headers()
            await _held_until_seen(aio)
            service.send_signal(signal.SIGTERM)
            assert await _in_flight_at_sigterm(service) == 1
            start = time.monotonic()
            service.send_signal(signal.SIGTERM)
            with pytest.raises(GRPCError) as cut:
                await refresh.wait_without_message()
            assert cut.value.status is Status.UNAVAILABLE
            assert time.monotonic() - start < 10
        assert await service.wait_exit(limit_s=10) == 0
        assert (
            service.find("Received SIGTERM again: skipping the rest of the grace period")
            is not None
        )
