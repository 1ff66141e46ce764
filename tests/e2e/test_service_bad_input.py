"""Bad requests over the wire get the right status code and a message naming the rule and
the field; the stored rules stay exactly as they were, and the service keeps answering.

Each bad request goes through both clients: the project's grpclib client and grpcio.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from pathlib import Path

import attrs
from grpclib.const import Status
from support.trio_service import open_service
from support.waiting import in_thread

from guardrefresh.proto import rule_installation as pb

from .service import (
    DataPlaneClient,
    GrpclibClient,
    anchor_vectors,
    full_rule,
    open_grpcio_client,
    open_grpclib_client,
    rule_set,
    stats_rows,
    to_grpcio,
)

AGENT = "agent-a"
MAX_RULES = 5
MAX_MESSAGE_BYTES = 32 * 1024


def _with_anchors(
    rule: pb.RuleInstance, edit: Callable[[pb.RuleAnchorsPayload], None]
) -> pb.RuleInstance:
    assert rule.anchors is not None
    edit(rule.anchors)
    return rule


def _width_31(anchors: pb.RuleAnchorsPayload) -> None:
    anchors.action_anchors[0].values = anchors.action_anchors[0].values[:31]


def _seventeen(anchors: pb.RuleAnchorsPayload) -> None:
    anchors.resource_anchors = anchor_vectors(17, seed=3)
    anchors.resource_count = 17


def _count_mismatch(anchors: pb.RuleAnchorsPayload) -> None:
    anchors.data_anchors = anchor_vectors(1, seed=4)
    anchors.data_count = 2


def _nan_anchor(anchors: pb.RuleAnchorsPayload) -> None:
    anchors.risk_anchors[0].values[7] = math.nan


def _good(i: int) -> pb.RuleInstance:
    return full_rule(f"good-{i}", seed=100 + i)


@attrs.frozen
class Case:
    name: str
    rules: list[pb.RuleInstance]
    #: Fragments the status message must contain (rule id, field, problem).
    expect: tuple[str, ...]
    agent_id: str = AGENT
    code: Status = Status.INVALID_ARGUMENT


CASES = [
    Case(
        "empty rule_id",
        [_good(1), full_rule("")],
        ("empty rule_id", "rule_id", "must not be empty"),
    ),
    Case(
        "duplicate ids",
        [full_rule("dup"), _good(1), full_rule("dup", seed=5)],
        ("'dup'", "rule_id", "more than once"),
    ),
    Case(
        "anchor of 31 values",
        [_with_anchors(full_rule("w31"), _width_31)],
        ("'w31'", "anchors.action_anchors[0]", "exactly 32", "got 31"),
    ),
    Case(
        "17 anchors in a slot",
        [_with_anchors(full_rule("many"), _seventeen)],
        ("'many'", "anchors.resource_anchors", "at most 16", "got 17"),
    ),
    Case(
        "count disagrees with the vectors",
        [_with_anchors(full_rule("cnt"), _count_mismatch)],
        ("'cnt'", "anchors.data_count", "count 2"),
    ),
    Case(
        "NaN in an anchor",
        [_with_anchors(full_rule("nan"), _nan_anchor)],
        ("'nan'", "anchors.risk_anchors[0]", "finite"),
    ),
    Case(
        "NaN drift threshold",
        [full_rule("drift", drift_threshold=math.nan)],
        ("'drift'", "drift_threshold", "finite"),
    ),
    Case(
        "unknown policy type",
        [full_rule("pol", policy_type="allow")],
        ("'pol'", "policy_type", "unknown policy type 'allow'"),
    ),
    Case(
        "three slice weights",
        [full_rule("sw3", slice_weights=(0.5, 0.25, 0.25))],
        ("'sw3'", "slice_weights", "got 3"),
    ),
    Case(
        "modification_spec that is not JSON",
        [full_rule("spec", modification_spec="{redact: ssn")],
        ("'spec'", "modification_spec", "JSON"),
    ),
    Case(
        "param without a value",
        [full_rule("param", params={"limit": pb.ParamValue()})],
        ("'param'", "params['limit']", "not set"),
    ),
    Case(
        "rule scoped to another agent",
        [_good(1), full_rule("other", agent_id="agent-other")],
        ("'other'", "agent_id", "agent-other", AGENT),
    ),
    Case("empty agent_id", [_good(1)], ("agent_id is required",), agent_id=""),
    Case(
        "one bad rule among good ones",
        [_good(1), _good(2), full_rule("bad", policy_type="deny"), _good(3)],
        ("'bad'", "policy_type"),
    ),
    Case(
        "too many rules",
        [_good(i) for i in range(MAX_RULES + 1)],
        (f"{MAX_RULES + 1} rules", f"limit is {MAX_RULES}"),
    ),
]


class _Snapshot:
    """What the service stores, as seen through GetRuleStats and GetRule."""

    def __init__(
        self, stats: pb.GetRuleStatsResponse, rules: dict[str, pb.GetRuleResponse]
    ) -> None:
        self.bridge_version = stats.bridge_version
        self.rows = stats_rows(stats)
        self.total = stats.total_rules
        self.rules = {rule_id: response.rule for rule_id, response in rules.items()}

    @classmethod
    async def take(cls, client: GrpclibClient, rule_ids: list[str]) -> _Snapshot:
        stats = await client.call("get_rule_stats", pb.GetRuleStatsRequest())
        rules = {
            rule_id: await client.call("get_rule", pb.GetRuleRequest(rule_id=rule_id))
            for rule_id in rule_ids
        }
        return cls(stats, rules)

    def same_as(self, other: _Snapshot) -> bool:
        return (self.bridge_version, self.rows, self.total, self.rules) == (
            other.bridge_version,
            other.rows,
            other.total,
            other.rules,
        )


async def _send_both(
    aio: GrpclibClient,
    rpc: DataPlaneClient,
    modules: types.SimpleNamespace,
    request: pb.InstallRulesRequest,
) -> list[tuple[str, str]]:
    """Send ``request`` through both clients; their (status name, message) pairs."""
    code, message = await aio.status("install_rules", request)
    outcome = await in_thread(rpc.outcome, "InstallRules", to_grpcio(modules, request))
    return [(code.name, message), (outcome.code.name, outcome.details)]


async def test_bad_installs_are_refused_and_change_nothing(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    baseline = rule_set(AGENT, "base")
    baseline_ids = [r.rule_id for r in baseline]
    async with (
        open_service(
            tmp_path,
            "--max-rules-per-install",
            str(MAX_RULES),
            "--max-message-bytes",
            str(MAX_MESSAGE_BYTES),
        ) as service,
        open_grpclib_client(service.port) as aio,
        open_grpcio_client(grpcio_modules, service.port) as rpc,
    ):
        await aio.call("install_rules", pb.InstallRulesRequest(agent_id=AGENT, rules=baseline))
        before = await _Snapshot.take(aio, baseline_ids)
        assert before.total == len(baseline)

        for case in CASES:
            request = pb.InstallRulesRequest(agent_id=case.agent_id, rules=case.rules)
            assert len(bytes(request)) < MAX_MESSAGE_BYTES, case.name
            for code, message in await _send_both(aio, rpc, grpcio_modules, request):
                assert code == case.code.name, (case.name, message)
                for fragment in case.expect:
                    assert fragment in message, (case.name, fragment, message)
            after = await _Snapshot.take(aio, baseline_ids)
            assert after.same_as(before), case.name
            for rule in case.rules:
                if rule.rule_id and rule.rule_id not in baseline_ids:
                    code, _ = await aio.status("get_rule", pb.GetRuleRequest(rule_id=rule.rule_id))
                    assert code is Status.NOT_FOUND, (case.name, rule.rule_id)

        # The same five good rules are accepted, so the refusals above were about content.
        accepted = await aio.call(
            "install_rules",
            pb.InstallRulesRequest(agent_id=AGENT, rules=[_good(i) for i in range(MAX_RULES)]),
        )
        assert (accepted.success, accepted.rules_installed) == (True, MAX_RULES)


async def test_oversized_request_is_resource_exhausted_and_service_goes_on(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    # Fewer rules than the per-install limit: it is the size that is refused.
    oversized = pb.InstallRulesRequest(
        agent_id=AGENT,
        rules=[full_rule(f"big-{i}", seed=i, counts=(16, 16, 16, 16)) for i in range(4)],
    )
    size = len(bytes(oversized))
    assert size > MAX_MESSAGE_BYTES
    async with (
        open_service(tmp_path, "--max-message-bytes", str(MAX_MESSAGE_BYTES)) as service,
        open_grpclib_client(service.port) as aio,
        open_grpcio_client(grpcio_modules, service.port) as rpc,
    ):
        await aio.call("install_rules", pb.InstallRulesRequest(agent_id=AGENT, rules=[_good(0)]))
        before = await _Snapshot.take(aio, ["good-0"])

        for code, message in await _send_both(aio, rpc, grpcio_modules, oversized):
            assert code == "RESOURCE_EXHAUSTED", message
            assert f"{size} bytes" in message and f"{MAX_MESSAGE_BYTES} bytes" in message

        # Both connections still work, and nothing of the big request was stored.
        assert (await _Snapshot.take(aio, ["good-0"])).same_as(before)
        stats = await in_thread(rpc.call, "GetRuleStats", pb2.GetRuleStatsRequest())
        assert stats.total_rules == 1
        small = await in_thread(
            rpc.call,
            "InstallRules",
            pb2.InstallRulesRequest(agent_id=AGENT, rules=[to_grpcio(grpcio_modules, _good(1))]),
        )
        assert small.success and small.bridge_version > before.bridge_version
        got = await aio.call("get_rule", pb.GetRuleRequest(rule_id="good-1"))
        assert got.rule == _good(1)
