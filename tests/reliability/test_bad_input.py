"""Bad input over the wire, against one long-running service (module fixture).

- Hypothesis-generated malformed InstallRules requests (wrong anchor widths, NaN and
  infinities, too many anchors, over-long ids and names, duplicate ids in one batch,
  unknown policy types, huge or unset params, bad JSON, foreign agents, too many
  rules, invalid UTF-8), each mixed into a batch of valid rules: INVALID_ARGUMENT with
  a message naming the rule and the field, nothing of the batch stored.
- Random bytes as the request of every method: an error status (never a hang, never
  UNAVAILABLE), and the server answers the next call.
- Oversized requests: RESOURCE_EXHAUSTED naming both sizes.
- Deadlines that have expired before the call and ones that expire during it:
  DEADLINE_EXCEEDED, no ERROR record, and the server is fine; valid installs cut off by
  their deadline are stored whole or not at all (own service: they change the store).

After every group the rules stored are exactly the baseline (GetRuleStats byte for
byte, which includes the bridge version every write bumps), the server still answers,
and when the module ends the service shuts down cleanly with no error in its log and a
fresh load of its store holds exactly the baseline.
"""

from __future__ import annotations

import math
import random
import signal
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest
from grpcio_support import DATA_PLANE, DataPlaneClient, raw_h2_call
from hypothesis import given, settings
from hypothesis import strategies as st
from support.payloads import SLOTS, anchors_payload
from support.service import ServiceProcess, running_service

from guardrefresh.model import echo

from .service import Observed, pb_rule, read_store

AGENT = "agent-bad-input"
BASELINE_AGENT = "baseline-agent"
MAX_RULES = 20
MAX_MESSAGE_BYTES = 1024 * 1024
POLICY_TYPES = ("forbidden", "context_allow", "context_deny", "context_defer")
METHODS = {
    "InstallRules": "InstallRulesRequest",
    "RemoveAgentRules": "RemoveAgentRulesRequest",
    "RemovePolicy": "RemovePolicyRequest",
    "GetRuleStats": "GetRuleStatsRequest",
    "Enforce": "EnforceRequest",
    "QueryTelemetry": "QueryTelemetryRequest",
    "GetSession": "GetSessionRequest",
    "RefreshRules": "RefreshRulesRequest",
    "GetRule": "GetRuleRequest",
    "GetRefreshStatus": "GetRefreshStatusRequest",
}
#: grpc-status values as the raw HTTP/2 client reads them from the trailers.
OK_STATUS = str(grpc.StatusCode.OK.value[0])
DEADLINE_STATUS = str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
#: Statuses that would mean the server broke down rather than refused.
BROKEN = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}


@attrs.frozen
class Served:
    service: ServiceProcess
    client: DataPlaneClient
    baseline: Observed


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, grpcio_modules: types.SimpleNamespace
) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("bad_input")
    args = (
        "--max-rules-per-install",
        str(MAX_RULES),
        "--max-message-bytes",
        str(MAX_MESSAGE_BYTES),
    )
    with (
        running_service(workdir, *args) as service,
        DataPlaneClient(grpcio_modules, service.port, own_connection=True) as client,
    ):
        pb2 = client.pb2
        rules = [pb_rule(pb2, f"base-{i}", seed=i) for i in range(5)]
        client.call("InstallRules", pb2.InstallRulesRequest(agent_id=BASELINE_AGENT, rules=rules))
        baseline = Observed.take(client, [r.rule_id for r in rules])
        yield Served(service, client, baseline)
        assert service.returncode is None, service.log
        assert Observed.take(client, list(baseline.rules)) == baseline
        assert service.stop(signal.SIGTERM) == 0, service.log
    stored = read_store(service.warm_storage)
    assert sorted(stored) == sorted(baseline.rules)


def _still_serving(served: Served) -> None:
    """The server answers, and holds exactly the baseline."""
    assert served.service.returncode is None, served.service.log
    stats = served.client.stats().SerializeToString(deterministic=True)
    assert stats == served.baseline.stats


# ------------------------------------------------------------ malformed installs ---


@attrs.frozen
class Plan:
    """One malformed request: what is wrong, where it sits among valid rules."""

    kind: str
    good: int  # valid rules around the bad one
    position: int
    slot: int
    size: int
    value: float
    text: str


_KINDS = (
    "anchor_width", "anchor_not_finite", "too_many_anchors", "count_mismatch",
    "drift_not_finite", "drift_negative", "weights_count", "weights_not_finite",
    "long_rule_id", "long_family", "long_layer", "duplicate_ids", "unknown_policy",
    "huge_param", "too_many_params", "param_unset", "param_not_finite", "bad_spec",
    "empty_rule_id", "empty_agent", "other_agent", "too_many_rules", "invalid_utf8",
)  # fmt: skip


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    kind = draw(st.sampled_from(_KINDS))
    good = draw(st.integers(0, 3))
    return Plan(
        kind=kind,
        good=good,
        position=draw(st.integers(0, good)),
        slot=draw(st.integers(0, 3)),
        size=draw(st.integers(0, 1000)),
        value=draw(st.sampled_from([math.nan, math.inf, -math.inf])),
        text=draw(st.text(max_size=20).filter(lambda t: t not in POLICY_TYPES)),
    )


def _build(pb2: Any, plan: Plan) -> tuple[bytes, list[str], tuple[str, ...]]:
    """The request's bytes, the ids it carries, and fragments the refusal must contain."""
    rid = "bad-rule"
    rules = [pb_rule(pb2, f"cand-{i}", seed=i) for i in range(plan.good)]
    bad = pb_rule(pb2, rid, seed=99)
    agent = AGENT
    slot = SLOTS[plan.slot]
    extra: list[Any] = []
    kind = plan.kind
    if kind == "anchor_width":
        width = plan.size % 64 if plan.size % 64 != 32 else 33
        bad.anchors.CopyFrom(anchors_payload((1, 1, 1, 1), seed=1, pb2=pb2))
        getattr(bad.anchors, f"{slot}_anchors")[0].values[:] = [0.5] * width
        expect: tuple[str, ...] = (f"anchors.{slot}_anchors[0]", "exactly 32", f"got {width}")
    elif kind == "anchor_not_finite":
        bad.anchors.CopyFrom(anchors_payload((1, 1, 1, 1), seed=1, pb2=pb2))
        getattr(bad.anchors, f"{slot}_anchors")[0].values[plan.size % 32] = plan.value
        expect = (f"anchors.{slot}_anchors[0]", "finite")
    elif kind == "too_many_anchors":
        count = 17 + plan.size % 4
        counts = [0, 0, 0, 0]
        counts[plan.slot] = count
        bad.anchors.CopyFrom(anchors_payload(counts, seed=1, pb2=pb2))
        expect = (f"anchors.{slot}_anchors", "at most 16", f"got {count}")
    elif kind == "count_mismatch":
        counts = [1, 1, 1, 1]
        bad.anchors.CopyFrom(anchors_payload(counts, seed=1, pb2=pb2))
        wrong = 2 + plan.size % 5
        setattr(bad.anchors, f"{slot}_count", wrong)
        expect = (f"anchors.{slot}_count", f"count {wrong}")
    elif kind == "drift_not_finite":
        bad.drift_threshold = plan.value
        expect = ("drift_threshold", "finite")
    elif kind == "drift_negative":
        bad.drift_threshold = -1.0 - plan.size
        expect = ("drift_threshold", ">= 0")
    elif kind == "weights_count":
        count = (1, 2, 3, 5, 6)[plan.size % 5]
        bad.slice_weights[:] = [0.25] * count
        expect = ("slice_weights", f"got {count}")
    elif kind == "weights_not_finite":
        bad.slice_weights[:] = [0.25, plan.value, 0.25, 0.25]
        expect = ("slice_weights", "finite")
    elif kind == "long_rule_id":
        rid = "x" * (257 + plan.size)
        bad.rule_id = rid
        expect = ("rule_id", "at most 256 characters", f"got {len(rid)}")
    elif kind in ("long_family", "long_layer"):
        field = "family_id" if kind == "long_family" else "layer"
        setattr(bad, field, "f" * (129 + plan.size))
        expect = (field, "at most 128 characters")
    elif kind == "duplicate_ids":
        extra = [pb_rule(pb2, rid, seed=98)]
        expect = ("rule_id", "more than once")
    elif kind == "unknown_policy":
        bad.policy_type = plan.text
        expect = ("policy_type", "unknown policy type")
    elif kind == "huge_param":
        bad.params["blob"].string_value = "p" * (64 * 1024 + 1 + plan.size)
        expect = ("params", "65536")
    elif kind == "too_many_params":
        for i in range(257 + plan.size % 50):
            bad.params[f"k{i}"].int_value = i
        expect = ("params", "at most 256 entries")
    elif kind == "param_unset":
        bad.params["empty"].CopyFrom(pb2.ParamValue())
        expect = ("params['empty']", "not set")
    elif kind == "param_not_finite":
        bad.params["ratio"].float_value = plan.value
        expect = ("params['ratio']", "finite")
    elif kind == "bad_spec":
        bad.modification_spec = "{not json" + plan.text
        expect = ("modification_spec", "JSON")
    elif kind == "empty_rule_id":
        rid = ""
        bad.rule_id = ""
        expect = ("empty rule_id", "rule_id", "must not be empty")
    elif kind == "empty_agent":
        agent = ""
        expect = ("agent_id is required",)
    elif kind == "other_agent":
        bad.agent_id = "someone-else"
        expect = ("agent_id", "someone-else", AGENT)
    elif kind == "too_many_rules":
        rules = [pb_rule(pb2, f"cand-{i}", seed=i) for i in range(MAX_RULES + 1 + plan.size % 5)]
        total = len(rules) + 1
        expect = (f"{total} rules", f"limit is {MAX_RULES}")
    elif kind == "invalid_utf8":
        bad.family_id = "\u00e9" * 4  # replaced below by bytes that are not UTF-8
        expect = ("InstallRulesRequest",)
    else:  # pragma: no cover - the strategy draws from _KINDS
        raise AssertionError(kind)
    batch = [*rules[: plan.position], bad, *rules[plan.position :], *extra]
    request = pb2.InstallRulesRequest(agent_id=agent, rules=batch, config_id="cfg", owner="o")
    data = request.SerializeToString()
    if kind == "invalid_utf8":
        data = data.replace(("\u00e9" * 4).encode(), b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8")
    elif rid and kind not in ("empty_agent", "too_many_rules"):
        expect = (f"rule {echo(rid)}", *expect)
    return data, [r.rule_id for r in batch], expect


@settings(max_examples=100, deadline=None)
@given(plan=plans())
def test_malformed_installs_are_refused_with_the_rule_and_field(served: Served, plan: Plan) -> None:
    client = served.client
    data, rule_ids, expect = _build(client.pb2, plan)
    assert len(data) < MAX_MESSAGE_BYTES
    outcome = client.raw("InstallRules", data)
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, (plan.kind, outcome)
    for fragment in expect:
        assert fragment in outcome.details, (plan.kind, fragment, outcome.details[:300])
    _still_serving(served)
    for rule_id in {r for r in rule_ids if r}:
        lookup = client.outcome("GetRule", client.pb2.GetRuleRequest(rule_id=rule_id))
        assert lookup.code is grpc.StatusCode.NOT_FOUND, (plan.kind, rule_id, lookup)


# ----------------------------------------------------------------- garbage bytes ---


def _garbage(rng: random.Random, count: int) -> Iterator[bytes]:
    yield b""
    yield b"\xff" * 16
    yield b"\x0a\xff\xff\xff\xff\x0f"  # a length prefix far past the end
    yield b"\x08" * 3  # a varint that never ends
    for _ in range(count - 4):
        yield rng.randbytes(rng.choice((1, 2, 5, 17, 100, 1000, 5000)))


def test_random_bytes_to_every_method_get_an_error_not_a_crash(served: Served) -> None:
    rng = random.Random(424242)
    codes: dict[str, set[str]] = {}
    for method in METHODS:
        for payload in _garbage(rng, 25):
            outcome = served.client.raw(method, payload, deadline_s=30)
            assert outcome.code.name not in BROKEN, (method, payload[:40], outcome)
            if method == "InstallRules" and outcome.ok:
                # Bytes that happen to decode as a request with an agent and no rules.
                response = served.client.pb2.InstallRulesResponse.FromString(outcome.response)
                assert response.rules_installed == 0, (payload[:40], response)
            codes.setdefault(method, set()).add(outcome.code.name)
            assert served.service.returncode is None, served.service.log
        _still_serving(served)
    print(f"garbage bytes: status codes per method: {codes}")
    # Undecodable bytes are refused as such somewhere; not every method answered OK.
    assert any(code != "OK" for per in codes.values() for code in per)


# -------------------------------------------------------------------- oversized ---


def test_oversized_requests_are_resource_exhausted(served: Served) -> None:
    client = served.client
    pb2 = client.pb2
    full = anchors_payload((16, 16, 16, 16), seed=5, pb2=pb2)
    rules = [pb_rule(pb2, f"huge-{i}", seed=i, anchors=full) for i in range(MAX_RULES)]
    for rule in rules:
        rule.params["blob"].string_value = "b" * 60_000  # valid: under the 64 KiB of extras
    big = pb2.InstallRulesRequest(agent_id=AGENT, rules=rules)
    # Under the per-install rule limit: it is the size that is refused.
    cases = [
        ("InstallRules", big.SerializeToString()),
        ("InstallRules", random.Random(1).randbytes(3 * MAX_MESSAGE_BYTES)),
        ("GetRule", pb2.GetRuleRequest(rule_id="r" * (2 * MAX_MESSAGE_BYTES)).SerializeToString()),
        (
            "RefreshRules",
            pb2.RefreshRulesRequest(family_ids=["f" * 1000] * 2000).SerializeToString(),
        ),
    ]
    for method, data in cases:
        assert len(data) > MAX_MESSAGE_BYTES
        outcome = client.raw(method, data)
        assert outcome.code is grpc.StatusCode.RESOURCE_EXHAUSTED, (method, outcome)
        assert f"{len(data)} bytes" in outcome.details, outcome.details
        assert f"{MAX_MESSAGE_BYTES} bytes" in outcome.details, outcome.details
        _still_serving(served)
    for rule in rules[:3]:
        lookup = client.outcome("GetRule", pb2.GetRuleRequest(rule_id=rule.rule_id))
        assert lookup.code is grpc.StatusCode.NOT_FOUND


# -------------------------------------------------------------------- deadlines ---


def test_expired_and_expiring_deadlines(served: Served) -> None:
    client = served.client
    pb2 = client.pb2
    # An install that cannot store anything whatever happens to its deadline.
    install = pb2.InstallRulesRequest(agent_id=AGENT, rules=[pb_rule(pb2, "late", policy_type="?")])
    requests = {
        method: install if method == "InstallRules" else getattr(pb2, message)()
        for method, message in METHODS.items()
    }
    # Expired on arrival, for certain: a grpc-timeout of 1 ns (grpcio will not send one
    # that small) has passed before any handler could start.
    for method, request in requests.items():
        answer = raw_h2_call(
            served.service.port,
            f"/{DATA_PLANE}/{method}",
            request.SerializeToString(),
            [("grpc-timeout", "1n")],
        )
        assert answer.get("grpc-status") == DEADLINE_STATUS, (method, answer)
    _still_serving(served)

    # grpcio with a 1 us deadline: usually cut off on the client before an answer, but
    # the server may be quicker than grpcio's timer. Either way nothing else.
    normal = {method: client.outcome(method, request).code for method, request in requests.items()}
    codes: Counter[str] = Counter()
    for _ in range(5):
        for method, request in requests.items():
            outcome = client.outcome(method, request, deadline_s=0.000001)
            codes[outcome.code.name] += 1
            assert outcome.code in (grpc.StatusCode.DEADLINE_EXCEEDED, normal[method]), (
                method,
                outcome,
            )
    _still_serving(served)

    # Deadlines from a tenth of a millisecond to a few, enforced by the server alone (the
    # raw client waits for its answer): some calls finish, some are cut off on the way,
    # and none can answer within 0.1 ms (an unchanged refresh alone takes about 0.4).
    statuses: Counter[str] = Counter()
    for timeout_us in (100, 200, 500, 1000, 2000, 3000, 5000, 8000, 13000, 21000) * 3:
        answer = raw_h2_call(
            served.service.port,
            f"/{DATA_PLANE}/RefreshRules",
            pb2.RefreshRulesRequest().SerializeToString(),
            [("grpc-timeout", f"{timeout_us}u")],
        )
        statuses[answer.get("grpc-status", "none")] += 1
    assert set(statuses) <= {OK_STATUS, DEADLINE_STATUS}, statuses
    assert statuses[DEADLINE_STATUS] >= 3, statuses
    _still_serving(served)
    assert client.call("RefreshRules", pb2.RefreshRulesRequest()).success
    # No ERROR record for any of them (the module fixture checks the whole log at the end).
    served.service.check_log_clean()
    print(f"1 us deadlines through grpcio: {dict(codes)}; refreshes by status: {dict(statuses)}")


def test_installs_cut_off_by_their_deadline_are_all_or_nothing(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    """Valid installs with deadlines around their own duration.

    A deadline can fire while the install commits on the Trio side: the commit finishes
    (the store never holds half a batch), the client gets DEADLINE_EXCEEDED, and the
    service logs it at INFO, not as an ERROR. Whatever was acknowledged is stored.
    """
    batch = 50
    outcomes: dict[str, str] = {}
    with (
        running_service(tmp_path) as service,
        DataPlaneClient(grpcio_modules, service.port, own_connection=True) as client,
    ):
        pb2 = client.pb2
        # Sent raw, so that the server's deadline alone decides (grpcio would reset the
        # stream at its own deadline): 1 ms is far shorter than any 50-rule install.
        for call in range(60):
            agent = f"deadline-agent-{call}"
            rules = [pb_rule(pb2, f"{agent}-{i}", seed=i) for i in range(batch)]
            request = pb2.InstallRulesRequest(agent_id=agent, rules=rules)
            answer = raw_h2_call(
                service.port,
                f"/{DATA_PLANE}/InstallRules",
                request.SerializeToString(),
                [("grpc-timeout", f"{1 + call // 2}m")],
            )
            assert answer.get("grpc-status") in (OK_STATUS, DEADLINE_STATUS), (agent, answer)
            outcomes[agent] = answer["grpc-status"]
        assert client.stats().total_rules % batch == 0
        assert service.stop(signal.SIGTERM) == 0, service.log
    # The agent of an install is recorded as installed_by (the rules are not scoped).
    stored = Counter(rule.installed_by for rule in read_store(service.warm_storage).values())
    for agent, status in outcomes.items():
        if status == OK_STATUS:
            assert stored[agent] == batch, (agent, stored[agent])
        else:
            assert stored[agent] in (0, batch), (agent, stored[agent])
    statuses = Counter(outcomes.values())
    assert statuses[DEADLINE_STATUS] >= 2, statuses
    print(f"installs by status: {dict(statuses)}; rules stored {sum(stored.values())}")
