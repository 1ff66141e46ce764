"""How to run guardrefresh's periodic refresh next to a server in one Trio nursery.

    python examples/scheduler_integration.py [--interval SECONDS] [--cycles N]

It opens a throw-away warm store, starts the refresh service, a scheduler with
a custom configuration and a gRPC server side by side, lets another writer
change warm storage behind the server's back, watches the scheduler pick the
change up, and stops everything cleanly: the scheduler through its
CancelScope (``stop()``), the server through its graceful drain.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import trio
import trio_asyncio

from guardrefresh.bridge import Bridge
from guardrefresh.model import PolicyType, Rule
from guardrefresh.refresh import (
    RefreshScheduler,
    RefreshTrigger,
    SchedulerConfig,
    open_refresh_service,
)
from guardrefresh.server import DataPlaneService, GrpcHost
from guardrefresh.storage import WarmStore


def demo_rules(version: int) -> list[Rule]:
    return [
        Rule(
            rule_id=f"rule-{i}",
            family_id="tool_call" if i % 2 else "data_access",
            layer="L1",
            priority=version,
            policy_type=PolicyType.FORBIDDEN if i % 3 == 0 else PolicyType.CONTEXT_DENY,
        )
        for i in range(6)
    ]


async def main(interval: float, cycles: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm_storage.bin"
        bridge = await Bridge.open(path, hot_capacity=100, make_dirs=True)
        await bridge.install_rules("demo-agent", demo_rules(1))
        print(f"warm storage at {path}: {len(bridge.table)} rules")

        # A custom configuration: the testing preset with a shorter interval, no jitter.
        config = SchedulerConfig(
            refresh_interval=interval, jitter=0.0, backoff_initial=interval / 2
        )
        async with trio_asyncio.open_loop(), open_refresh_service(bridge) as refresher:
            await refresher.refresh(trigger=RefreshTrigger.STARTUP)
            scheduler = RefreshScheduler(refresher, config)
            host = GrpcHost([DataPlaneService(bridge, refresher, scheduler)], port=0)
            async with trio.open_nursery() as nursery:
                await nursery.start(scheduler.run)
                port = await nursery.start(host.serve)
                host.set_serving(True)
                print(f"gRPC server listening on 127.0.0.1:{port}; scheduler every {interval}s")

                for cycle in range(1, cycles + 1):
                    # Another writer (say, `guardrefresh warm import`) changes the rules
                    # without telling us: only the periodic refresh will notice.
                    other = WarmStore(path)
                    other.write_snapshot_from(demo_rules(cycle + 1))
                    other.close()
                    before = scheduler.last_refresh()
                    await scheduler.last_refresh_ms.wait_value(lambda ms, b=before: ms > b)
                    stats = refresher.last_stats.value
                    assert stats is not None
                    found = bridge.get_rule("rule-0")
                    assert found is not None
                    print(
                        f"cycle {cycle}: periodic refresh saw {stats.rules_refreshed} rules "
                        f"({stats.changed} changed); rule-0 priority is now {found[0].priority}"
                    )

                print("shutting down: stopping the scheduler, draining the server")
                scheduler.stop()
                report = await host.drain(grace=1.0)
                print(f"drained: {report.completed} in-flight calls completed")
        bridge.close()
        print("done")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=1.0, help="refresh interval in seconds")
    parser.add_argument(
        "--cycles", type=int, default=3, help="how many external changes to wait for"
    )
    args = parser.parse_args()
    trio.run(main, args.interval, args.cycles)
