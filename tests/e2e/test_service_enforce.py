"""Enforce end to end: the management plane's rules and calls, over grpcio, against
``python -m guardrefresh`` (real processes, loopback, real clock).

The rules are built the way the management plane builds them (tests/e2e/management_plane.py:
zero-padded anchors, params as its converter sets them); the expected decisions follow
from the stand-in encoding by construction (equal texts: cosine 1; different: far below
the thresholds), so each one is written down, not recomputed.
"""

from __future__ import annotations

import json
import socket
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from encoder_server import running_encoder
from support.service import free_port
from support.trio_service import open_service
from support.waiting import in_thread

from .management_plane import (
    SLOTS,
    Boundary,
    Call,
    install_request,
    vector_of_intent_json,
)
from .service import DataPlaneClient, open_grpcio_client
from .test_service_metrics import scrape, value

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
CUSTOMER = {"t": "customer database", "p": "customer pii", "ctx": "production"}

BOUNDARIES_A = [
    Boundary(
        id="fb-delete", name="No deletes", tenant_id=TENANT_A, policy_type="forbidden",
        priority=100, op="delete records", **CUSTOMER, notes="Never delete customer records",
    ),
    Boundary(
        id="cd-export", name="Drifted exports", tenant_id=TENANT_A, policy_type="context_deny",
        priority=90, op="export data", **CUSTOMER, drift_threshold=0.5,
        notes="Block exports when the session drifted",
    ),
    Boundary(
        id="ca-read", name="Masked reads", tenant_id=TENANT_A, policy_type="context_allow",
        priority=80, op="read records", **CUSTOMER, modification_spec={"redact": ["ssn"]},
    ),
    Boundary(
        id="ca-email", name="Email", tenant_id=TENANT_A, policy_type="context_allow",
        priority=70, op="send email", t="email tool", scoring_mode="weighted-avg",
        weights={"action": 1.0, "resource": 1.0, "data": 0.0, "risk": 0.0},
        drift_threshold=0.3, notes="Email, unless drifting",
    ),
    Boundary(
        id="ca-export", name="Exports", tenant_id=TENANT_A, policy_type="context_allow",
        priority=60, op="export data", **CUSTOMER,
    ),
    Boundary(
        id="cdf-transfer", name="Transfers", tenant_id=TENANT_A, policy_type="context_defer",
        priority=50, op="transfer money", t="payments api", p="account numbers",
        ctx="production",
    ),
    Boundary(
        id="fb-disabled", name="Disabled", tenant_id=TENANT_A, policy_type="forbidden",
        priority=200, op="read records", **CUSTOMER, status="disabled",
    ),
]  # fmt: skip
BOUNDARIES_B = [
    # Another tenant allows what tenant A forbids: it must never decide for tenant A.
    Boundary(
        id="b-allow-delete", name="B deletes", tenant_id=TENANT_B, policy_type="context_allow",
        priority=1000, op="delete records", **CUSTOMER,
    ),
]  # fmt: skip


def call(op: str, t: str = CUSTOMER["t"], *, tenant: str = TENANT_A, **slots: Any) -> Call:
    defaults = {"p": CUSTOMER["p"], "ctx": CUSTOMER["ctx"]} if t == CUSTOMER["t"] else {}
    defaults.update(slots)
    return Call(id=f"call-{op}", tenant_id=tenant, agent_id="agent-7", op=op, t=t, **defaults)


DELETE = call("delete records")
EXPORT = call("export data")
READ = call("read records")
EMAIL = call("send email", "email tool")
TRANSFER = call("transfer money", "payments api", p="account numbers", ctx="production")
UNKNOWN = call("launch rockets", "launch pad")
DELETE_B = call("delete records", tenant=TENANT_B)

ALL_A = ["fb-delete", "cd-export", "ca-read", "ca-email", "ca-export", "cdf-transfer"]

# (call, drift, decision_name, legacy decision, evidence ids in order, drift_triggered)
EXPECTED: list[tuple[Call, float, str, int, list[str], bool]] = [
    (DELETE, 0.0, "DENY", 0, ["fb-delete"], False),
    (EXPORT, 0.9, "DENY", 0, ["fb-delete", "cd-export"], True),
    (EXPORT, 0.1, "ALLOW", 1, ["fb-delete", "cd-export", "ca-read", "ca-email", "ca-export"], False),
    (READ, 0.0, "MODIFY", 1, ["fb-delete", "cd-export", "ca-read"], False),
    (EMAIL, 0.0, "ALLOW", 1, ["fb-delete", "cd-export", "ca-read", "ca-email"], False),
    (EMAIL, 0.6, "STEP_UP", 0, ["fb-delete", "cd-export", "ca-read", "ca-email"], True),
    (TRANSFER, 0.0, "DEFER", 0, ALL_A, False),
    (UNKNOWN, 0.0, "DENY", 0, ALL_A, False),
    (DELETE_B, 0.0, "ALLOW", 1, ["b-allow-delete"], False),
]  # fmt: skip


def enforce_request(
    pb2: types.ModuleType, c: Call, drift: float, *, with_vector: bool = True
) -> Any:
    return pb2.EnforceRequest(
        intent_event_json=c.intent_json(),
        intent_vector=c.vector() if with_vector else [],
        request_id=f"req-{c.id}-{drift}",
        drift_score=drift,
        session_id=c.agent_id,
    )


async def install_like_the_management_plane(
    client: DataPlaneClient, pb2: types.ModuleType, boundaries: Sequence[Boundary]
) -> Any:
    """``DataPlaneClient.install_policies``: RemovePolicy per boundary (errors ignored), then
    one InstallRules."""
    for b in boundaries:
        removed = await in_thread(
            client.outcome,
            "RemovePolicy",
            pb2.RemovePolicyRequest(agent_id=b.tenant_id, policy_id=b.id),
        )
        assert removed.code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)
    return await in_thread(client.call, "InstallRules", install_request(pb2, boundaries))


def check(
    response: Any,
    expected: tuple[Call, float, str, int, list[str], bool],
    *,
    nothing_matched: bool | None = None,
) -> None:
    c, drift, name, legacy, ids, drift_triggered = expected
    if nothing_matched is None:
        nothing_matched = c is UNKNOWN
    label = f"{c.id} drift {drift}"
    assert response.decision_name == name, label
    assert response.decision == legacy, label
    assert [e.rule_id for e in response.evidence] == ids, label
    assert response.rules_evaluated == len(ids), label
    assert response.drift_triggered is drift_triggered, label
    assert response.request_id == f"req-{c.id}-{drift}"
    assert len(response.slice_similarities) == 4
    for e in response.evidence:
        assert e.triggering_slice in SLOTS
        assert len(e.similarities) == 4 and len(e.thresholds) == 4
        assert e.scoring_mode in ("min", "weighted-avg")
    deciding = response.evidence[-1]
    if nothing_matched:
        assert not any(e.decision for e in response.evidence), label
    else:
        # A deciding rule matched every slot it has: its similarities are the response's.
        assert deciding.decision == 1, label
        assert list(response.slice_similarities) == list(deciding.similarities)
        assert deciding.anchor_matched == "0"  # the one real anchor of the triggering slot
    if name == "MODIFY":
        assert json.loads(response.modified_params) == {"redact": ["ssn"]}
    else:
        assert response.modified_params == ""


def _plain(response: Any) -> tuple[Any, list[float], list[tuple[Any, str, list[float]]]]:
    """A response as (everything but similarities, its similarities, per evidence: its
    exact fields, its triggering slice, its similarities)."""
    evidence = [
        ((e.rule_id, e.rule_name, e.decision, e.anchor_matched, list(e.thresholds),
          e.scoring_mode), e.triggering_slice, list(e.similarities))
        for e in response.evidence
    ]  # fmt: skip
    rest = (
        response.decision, response.decision_name, response.rules_evaluated,
        response.request_id, response.modified_params, response.drift_triggered,
    )  # fmt: skip
    return rest, list(response.slice_similarities), evidence


def assert_same_answers(got: Sequence[Any], expected: Sequence[Any]) -> None:
    """Equal answers, but similarities only within 1e-5: float32 sums may round differently
    when the same rules are laid out differently in memory (after a restart), and a
    triggering slice may then fall on another slot whose similarity ties with it."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        rest_a, sims_a, evidence_a = _plain(a)
        rest_b, sims_b, evidence_b = _plain(b)
        assert rest_a == rest_b
        assert sims_a == pytest.approx(sims_b, abs=1e-5)
        assert [fields for fields, _, _ in evidence_a] == [fields for fields, _, _ in evidence_b]
        for (_, slice_a, x), (_, slice_b, y) in zip(evidence_a, evidence_b, strict=True):
            assert x == pytest.approx(y, abs=1e-5)
            tie = abs(x[SLOTS.index(slice_a)] - x[SLOTS.index(slice_b)]) <= 1e-5
            assert slice_a == slice_b or tie


async def enforce_all(client: DataPlaneClient, pb2: types.ModuleType, **kwargs: Any) -> list[Any]:
    return [
        await in_thread(client.call, "Enforce", enforce_request(pb2, c, drift, **kwargs))
        for c, drift, *_ in EXPECTED
    ]


async def test_management_plane_rules_install_enforce_remove_restart(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    with running_encoder(vector_for=vector_of_intent_json) as encoder:
        url = ("--management-plane-url", encoder.url + "/api/v2")
        async with open_service(tmp_path, *url) as service:
            async with open_grpcio_client(grpcio_modules, service.port) as client:
                installed = await install_like_the_management_plane(client, pb2, BOUNDARIES_A)
                assert installed.success and installed.rules_installed == len(BOUNDARIES_A)
                await install_like_the_management_plane(client, pb2, BOUNDARIES_B)

                with_vector = await enforce_all(client, pb2)
                for response, expected in zip(with_vector, EXPECTED, strict=True):
                    check(response, expected)
                # Every evidence entry carries the rule's notes, thresholds and mode.
                email = with_vector[4]
                assert [e.rule_name for e in email.evidence] == [
                    "Never delete customer records",
                    "Block exports when the session drifted",
                    "",
                    "Email, unless drifting",
                ]
                assert list(email.evidence[3].thresholds) == [0.75] * 4
                assert [e.scoring_mode for e in email.evidence] == ["min"] * 3 + ["weighted-avg"]
                matched = with_vector[0].evidence[0]
                assert list(matched.similarities) == pytest.approx([1.0] * 4, abs=1e-5)
                assert matched.triggering_slice == "action"  # equal products: the lowest slot

                # Without a vector, the service has the management plane encode the intent:
                # the same answers, and the encoder saw each intent exactly as sent.
                encoded = await enforce_all(client, pb2, with_vector=False)
                assert_same_answers(encoded, with_vector)
                assert encoder.paths == ["/api/v2/encode/intent"] * len(EXPECTED)
                assert encoder.bodies[0] == DELETE.intent_json().encode()

                removed = await in_thread(
                    client.call,
                    "RemovePolicy",
                    pb2.RemovePolicyRequest(agent_id=TENANT_A, policy_id="fb-delete"),
                )
                assert removed.rules_removed == 1
                after_removal = await enforce_all(client, pb2)
                check(
                    after_removal[0],
                    (DELETE, 0.0, "DENY", 0, ALL_A[1:], False),
                    nothing_matched=True,
                )
                # Every other tenant A answer only lost fb-delete's evidence entry.
                for before, after in zip(with_vector[1:-1], after_removal[1:-1], strict=True):
                    assert list(after.evidence) == list(before.evidence)[1:]
                    assert after.decision_name == before.decision_name
                assert after_removal[-1] == with_vector[-1]  # tenant B: untouched
            assert await service.stop() == 0

        # A restart on the same warm storage answers exactly as before it.
        async with open_service(tmp_path, *url) as service:
            async with open_grpcio_client(grpcio_modules, service.port) as client:
                assert_same_answers(await enforce_all(client, pb2), after_removal)
            assert await service.stop() == 0


async def test_fail_closed_without_encoder_and_with_encoder_down(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    # Bound, never listening: connections to it are refused for the whole test.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{holder.getsockname()[1]}"
        for args, reason, label in (
            ((), "no management plane URL is configured", "not_configured"),
            (("--management-plane-url", down), "/encode/intent failed", "unreachable"),
        ):
            workdir = tmp_path / label
            workdir.mkdir()
            metrics_port = free_port()
            async with open_service(
                workdir, *args, "--log-level", "DEBUG", "--metrics-port", str(metrics_port)
            ) as service:
                async with open_grpcio_client(grpcio_modules, service.port) as client:
                    await install_like_the_management_plane(client, pb2, BOUNDARIES_B)
                    for _ in range(3):
                        response = await in_thread(
                            client.call,
                            "Enforce",
                            enforce_request(pb2, DELETE_B, 0.0, with_vector=False),
                        )
                        # DELETE_B would be allowed; unencoded, it is denied.
                        assert (response.decision_name, response.decision) == ("DENY", 0)
                        assert (response.rules_evaluated, list(response.evidence)) == (0, [])
                        assert list(response.slice_similarities) == [0.0] * 4
                    # With its vector the same call is allowed: the denial was the encoder's.
                    allowed = await in_thread(
                        client.call, "Enforce", enforce_request(pb2, DELETE_B, 0.0)
                    )
                    assert allowed.decision_name == "ALLOW"
                samples = await scrape(metrics_port)
                await service.wait_for_log(reason)
                assert await service.stop() == 0
            # Counted by decision and by reason; every decision timed.
            assert value(samples, "guardrefresh_enforce_total", decision="DENY") == 3
            assert value(samples, "guardrefresh_enforce_total", decision="ALLOW") == 1
            assert value(samples, "guardrefresh_enforce_encode_failures_total", reason=label) == 3
            assert value(samples, "guardrefresh_enforce_duration_seconds_count") == 4
            assert value(samples, "guardrefresh_enforce_rules_evaluated_sum") == 1
            # One WARNING for the three failures (rate-limited); one DEBUG line per decision.
            warnings = [
                line for line in service.log.splitlines() if "Intent encoding failed" in line
            ]
            assert len(warnings) == 1 and "WARNING" in warnings[0], service.log
            assert service.log.count("Enforce req-") == 4


BAD_REQUESTS: list[tuple[str | None, list[float] | None, float, str]] = [
    ("{not json", None, 0.0, "intent_event_json is not valid JSON"),
    ("", None, 0.0, "intent_event_json is empty"),
    ('{"id": "x"}', None, 0.0, "missing field 'schemaVersion'"),
    ("[" * 100_000, None, 0.0, "nests deeper than 64 levels"),
    (None, [0.5] * 127, 0.0, "intent_vector has 127 values; expected 128"),
    (None, [float("nan")] + [0.5] * 127, 0.0, "intent_vector[0] is nan"),
    (None, [0.5] * 127 + [float("inf")], 0.0, "intent_vector[127] is inf"),
    (None, None, float("nan"), "drift_score is nan"),
    (None, None, float("-inf"), "drift_score is -inf"),
]


async def test_bad_requests_are_invalid_argument(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    async with open_service(tmp_path) as service:
        async with open_grpcio_client(grpcio_modules, service.port) as client:
            for intent_json, vector, drift, message in BAD_REQUESTS:
                request = enforce_request(pb2, DELETE_B, 0.0)
                if intent_json is not None:
                    request.intent_event_json = intent_json
                if vector is not None:
                    del request.intent_vector[:]
                    request.intent_vector.extend(vector)
                request.drift_score = drift
                outcome = await in_thread(client.outcome, "Enforce", request)
                assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, message
                assert message in outcome.details
            # The service is fine afterwards.
            fine = await in_thread(client.outcome, "Enforce", enforce_request(pb2, DELETE_B, 0.0))
            assert fine.ok and fine.response.decision_name == "DENY"  # no rules installed
        assert await service.stop() == 0


async def test_enforce_is_a_read_for_the_admin_token(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    token = "s3cret-token-for-enforce"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    good = (("authorization", f"Bearer {token}"),)
    request = enforce_request(pb2, UNKNOWN, 0.0)

    def code(client: DataPlaneClient, metadata: Sequence[tuple[str, str]] = ()) -> Any:
        try:
            client.stub.Enforce(request, timeout=10, metadata=metadata)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    for extra, without_token in (
        ((), grpc.StatusCode.OK),
        (("--auth-reads",), grpc.StatusCode.UNAUTHENTICATED),
    ):
        workdir = tmp_path / ("reads" if extra else "writes")
        workdir.mkdir()
        async with open_service(workdir, "--admin-token-file", str(token_file), *extra) as service:
            async with open_grpcio_client(grpcio_modules, service.port) as client:
                assert await in_thread(code, client) is without_token
                assert await in_thread(code, client, good) is grpc.StatusCode.OK
            assert await service.stop() == 0
