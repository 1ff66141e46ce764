"""Writes on any replica: :class:`FleetWriter` (InstallRules, RemovePolicy, RemoveAgentRules)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import trio

from ..bridge import GLOBAL_LAYER, Bridge, InstallResult
from ..model import Rule, echo
from ._engine import Engine
from ._record import encode_rules
from ._replica import Replica
from ._sql import write_install, write_remove_agent, write_remove_policy

__all__ = ["FleetWriter"]

logger = logging.getLogger(__name__)

#: How long an acknowledgement waits for this replica to apply its own write.
APPLY_TIMEOUT_S = 10.0


class FleetWriter:
    """The bridge's write methods, through the fleet's database.

    Same signatures, results and errors as :class:`~guardrefresh.bridge.Bridge`'s
    (validation, ownership, all-or-nothing), checked here first and, for ownership,
    against the database's rows inside the write transaction. Each write is one
    transaction (advisory lock, upserts or tombstones at fresh versions, NOTIFY) and
    is acknowledged only once this replica has applied it, so the caller reads its
    own write from here. The database unreachable raises
    :class:`~guardrefresh.replication.EngineUnavailableError` with nothing written.
    """

    def __init__(
        self,
        bridge: Bridge,
        engine: Engine,
        replica: Replica,
        *,
        apply_timeout_s: float = APPLY_TIMEOUT_S,
    ) -> None:
        self._bridge = bridge
        self._engine = engine
        self._replica = replica
        self._apply_timeout_s = apply_timeout_s

    async def install_rules(
        self, agent_id: str, rules: Sequence[Rule], *, config_id: str = "", owner: str = ""
    ) -> InstallResult:
        stamped = await self._bridge.prepare_install(
            agent_id, rules, config_id=config_id, owner=owner
        )
        if not stamped:
            return InstallResult(0, {}, self._bridge.bridge_version)
        encoded = await trio.to_thread.run_sync(encode_rules, stamped, abandon_on_cancel=True)
        outcome = await self._engine.run(
            write_install, agent_id, encoded, what="writing to the fleet database"
        )
        await self._replica.wait_applied(outcome.end, self._apply_timeout_s)
        by_layer = Counter(rule.layer or GLOBAL_LAYER for rule in stamped)
        logger.info(
            "Installed %d rules for agent %s (config %s): fleet version %d",
            len(stamped),
            echo(agent_id),
            echo(config_id),
            outcome.end,
            extra={"rules": len(stamped), "agent_id": agent_id, "bridge_version": outcome.end},
        )
        return InstallResult(len(stamped), dict(by_layer), outcome.end)

    async def remove_policy(self, agent_id: str, policy_id: str) -> int:
        outcome = await self._engine.run(
            write_remove_policy, agent_id, policy_id, what="writing to the fleet database"
        )
        await self._replica.wait_applied(outcome.end, self._apply_timeout_s)
        logger.info(
            "Removed rule %s of agent %s: fleet version %d",
            echo(policy_id),
            echo(agent_id),
            outcome.end,
            extra={"rules": 1, "agent_id": agent_id, "bridge_version": outcome.end},
        )
        return 1

    async def remove_agent_rules(self, agent_id: str) -> int:
        outcome = await self._engine.run(
            write_remove_agent, agent_id, what="writing to the fleet database"
        )
        removed = 0 if outcome is None else len(outcome.ids)
        if outcome is not None:
            await self._replica.wait_applied(outcome.end, self._apply_timeout_s)
        version = self._bridge.bridge_version if outcome is None else outcome.end
        logger.info(
            "Removed %d rules of agent %s: fleet version %d",
            removed,
            echo(agent_id),
            version,
            extra={"rules": removed, "agent_id": agent_id, "bridge_version": version},
        )
        return removed
