"""Talk to a running guardrefresh with the generated async gRPC client.

Installs the rules of ``examples/rules.json``, asks for a refresh and prints the
refresh status: what a management plane does, in a few lines. Start a service first::

    python -m guardrefresh                         # listens on 127.0.0.1:50051
    python examples/client.py --target 127.0.0.1:50051

The client is the one generated from ``proto/rule_installation.proto``
(betterproto2 messages, a grpclib ``DataPlaneStub``); it runs on asyncio. The rules file
format is described in ``docs/rules-json.md``; ``guardrefresh.model.rules_from_json``
reads and validates it, ``rule_to_proto`` turns each rule into a ``RuleInstance``.
The ``guardrefresh`` command does the same from a shell: ``guardrefresh install``,
``guardrefresh refresh``, ``guardrefresh status``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from guardrefresh.model import rule_to_proto, rules_from_json
from guardrefresh.proto import rule_installation as pb

RULES = Path(__file__).resolve().with_name("rules.json")


async def install_refresh_status(host: str, port: int, rules_file: Path) -> None:
    rules = rules_from_json(rules_file.read_bytes())
    # The file's top-level agent_id / config_id / owner: every rule carries them.
    first = rules[0]
    channel = Channel(host, port)
    try:
        stub = pb.DataPlaneStub(channel, timeout=10.0)

        installed = await stub.install_rules(
            pb.InstallRulesRequest(
                agent_id=first.installed_by,
                config_id=first.config_id,
                owner=first.owner,
                rules=[rule_to_proto(rule) for rule in rules],
            )
        )
        layers = ", ".join(f"{k}: {v}" for k, v in sorted(installed.rules_by_layer.items()))
        print(
            f"installed {installed.rules_installed} rules for {first.installed_by!r} "
            f"({layers}); bridge version {installed.bridge_version}"
        )

        refreshed = await stub.refresh_rules(pb.RefreshRulesRequest())
        print(
            f"refresh: {refreshed.message}; {refreshed.rules_refreshed} rules hot "
            f"(+{refreshed.rules_added} -{refreshed.rules_removed} ~{refreshed.rules_changed}) "
            f"in {refreshed.duration_ms} ms"
        )

        status = await stub.get_refresh_status(pb.GetRefreshStatusRequest())
        print(
            f"status: {status.hot_rules} hot / {status.warm_rules} warm rules, bridge version "
            f"{status.bridge_version}, last refresh {status.last_success_age_ms} ms ago "
            f"(trigger {status.last_stats.trigger}), next in "
            f"{status.current_interval_s / 3600:g} h, stale: {str(status.stale).lower()}"
        )
    finally:
        channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", metavar="HOST:PORT")
    parser.add_argument("--rules", type=Path, default=RULES, metavar="FILE")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    try:
        asyncio.run(install_refresh_status(host, int(port), args.rules))
    except GRPCError as exc:
        print(f"error: {exc.status.name}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach {args.target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
