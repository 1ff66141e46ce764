"""Metrics over real HTTP, and staleness, against a running service (real clock).

A scrape is a plain HTTP GET from a worker thread (urllib): an independent peer.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import trio
from grpclib.const import Status
from prometheus_client.parser import text_string_to_metric_families
from support.service import free_port
from support.trio_service import open_service

from guardrefresh.proto import rule_installation as pb

from .service import HOST, open_grpcio_peer, open_grpclib_client, rule_set


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            return str(response.read().decode())

    text = await trio.to_thread.run_sync(get)
    # Counters and histograms come without their `_created` timestamp series.
    assert "_created" not in text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_after_refreshes_failures_and_rpcs(tmp_path: Path) -> None:
    port = free_port()
    async with (
        open_service(tmp_path, "--metrics-port", str(port), "--hot-capacity", "3") as service,
        open_grpclib_client(service.port) as aio,
    ):
        assert service.find(rf"Metrics on http://127\.0\.0\.1:{port}/metrics")
        before = await scrape(port)
        assert (
            value(before, "guard_scheduler_refresh_total", trigger="startup", result="success") == 1
        )
        assert value(before, "guardrefresh_hot_cache_capacity") == 3
        assert value(before, "guardrefresh_bridge_version") == 0

        installed = await aio.call(
            "install_rules",
            pb.InstallRulesRequest(agent_id="agent-a", rules=rule_set("agent-a", "a")),
        )
        await aio.call("refresh_rules", pb.RefreshRulesRequest())
        for rule_id in ("a-forbidden", "a-allow", "missing"):
            await aio.status("get_rule", pb.GetRuleRequest(rule_id=rule_id))

        # A failure: a flipped bit in the snapshot makes the next refresh fail.
        snapshot = next(service.warm_storage.parent.glob("*.snap"))
        good = snapshot.read_bytes()
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x01
        snapshot.write_bytes(bytes(bad))
        code, message = await aio.status("refresh_rules", pb.RefreshRulesRequest())
        assert code is Status.UNAVAILABLE and "corrupt" in message
        snapshot.write_bytes(good)

        after = await scrape(port)
        assert value(after, "guard_scheduler_refresh_total", trigger="rpc", result="success") == 1
        assert value(after, "guard_scheduler_refresh_total", trigger="rpc", result="failure") == 1
        assert value(after, "guard_scheduler_refresh_errors_total", reason="corrupt") == 1
        assert value(after, "guardrefresh_warm_storage_loads_total") == 3
        assert (
            value(
                after,
                "guard_scheduler_refresh_duration_seconds_count",
                trigger="rpc",
                result="success",
            )
            == 1
        )
        assert value(after, "guardrefresh_bridge_version") == installed.bridge_version
        assert value(after, "guardrefresh_warm_storage_rules") == 4
        assert value(after, "guardrefresh_warm_storage_bytes") > 0
        assert value(after, "guardrefresh_hot_cache_rules") == 3
        assert value(after, "guardrefresh_hot_cache_evicted_total") >= 1
        assert value(after, "guardrefresh_hot_cache_misses_total") >= 1
        assert value(after, "guard_scheduler_last_success_timestamp_seconds") > 1.7e9
        assert value(after, "guard_scheduler_next_refresh_timestamp_seconds") > 1.7e9
        handled = "grpc_server_handled_total"
        unary = {"grpc_type": "unary", "grpc_service": "rule_installation.DataPlane"}
        assert value(after, handled, grpc_method="InstallRules", grpc_code="OK", **unary) == 1
        assert value(after, handled, grpc_method="GetRule", grpc_code="OK", **unary) == 2
        assert value(after, handled, grpc_method="GetRule", grpc_code="NotFound", **unary) == 1
        assert (
            value(after, handled, grpc_method="RefreshRules", grpc_code="Unavailable", **unary) == 1
        )
        assert (
            value(after, "grpc_server_handling_seconds_count", grpc_method="GetRule", **unary) == 3
        )
        assert await service.stop() == 0
    # The metrics endpoint went down with the service.
    with socket.socket() as sock:
        assert sock.connect_ex((HOST, port)) != 0


async def test_stale_rules_flip_health_only_with_fail_when_stale(tmp_path: Path) -> None:
    flags = ("--no-scheduler", "--max-staleness", "3")
    for fail_when_stale in (False, True):
        workdir = tmp_path / str(fail_when_stale)
        workdir.mkdir()
        extra = ("--fail-when-stale",) if fail_when_stale else ()
        metrics_port = free_port()
        async with (
            open_service(workdir, *flags, *extra, "--metrics-port", str(metrics_port)) as service,
            open_grpclib_client(service.port) as aio,
            open_grpcio_peer(service.port) as peer,
        ):
            assert await peer.check("") == "SERVING"
            status = await aio.call("get_refresh_status", pb.GetRefreshStatusRequest())
            assert not status.stale and status.max_staleness_s == 3.0
            await service.wait_for_log(r"Rules are stale", limit_s=10)
            status = await aio.call("get_refresh_status", pb.GetRefreshStatusRequest())
            assert status.stale and status.last_success_age_ms > 3000
            assert value(await scrape(metrics_port), "guard_scheduler_stale") == 1
            expected = "NOT_SERVING" if fail_when_stale else "SERVING"
            assert await peer.check("") == expected
            # A refresh makes the rules fresh again (and health SERVING).
            await aio.call("refresh_rules", pb.RefreshRulesRequest())
            await service.wait_for_log(r"Rules are fresh again", limit_s=10)
            assert await peer.check("") == "SERVING"
            assert value(await scrape(metrics_port), "guard_scheduler_stale") == 0
            assert await service.stop() == 0


async def test_connection_metrics_count_refused_and_idle_connections(tmp_path: Path) -> None:
    port = free_port()
    args = ("--metrics-port", str(port), "--max-connections", "2", "--idle-timeout", "1")
    async with open_service(tmp_path, *args) as service:
        before = await scrape(port)
        assert value(before, "guardrefresh_connections_max") == 2
        assert value(before, "guardrefresh_connections_refused_total") == 0
        assert value(before, "guardrefresh_accept_errors_total") == 0
        assert value(before, "guardrefresh_loop_errors_total", kind="connection") == 0
        # Three silent TCP clients: the third is over the cap.
        streams = [await trio.open_tcp_stream(HOST, service.port) for _ in range(3)]
        try:
            with trio.fail_after(10):
                while True:
                    during = await scrape(port)
                    if value(during, "guardrefresh_connections_refused_total") >= 1:
                        break
                    await trio.sleep(0.05)
            assert value(during, "guardrefresh_connections_refused_total") == 1
            assert value(during, "guardrefresh_connections_open") == 2
            with trio.fail_after(10):
                while True:
                    after = await scrape(port)
                    if value(after, "guardrefresh_connections_closed_total", reason="idle") >= 2:
                        break
                    await trio.sleep(0.1)
        finally:
            for stream in streams:
                await stream.aclose()
        assert value(after, "guardrefresh_connections_closed_total", reason="idle") == 2
        assert value(after, "guardrefresh_connections_closed_total", reason="calm") == 0
        assert value(after, "guardrefresh_connections_closed_total", reason="error") == 0
