"""Enforce calls become sessions: decided and refused ones, recorded, queryable, and
flushed on SIGTERM.

Real ``python -m guardrefresh`` processes, grpcio as the client, the management plane's
rules (from ``test_service_enforce``).
"""

from __future__ import annotations

import json
import math
import signal
import time
import types
import uuid
from pathlib import Path
from typing import Any

import attrs
import grpc
from support.trio_service import open_service
from support.waiting import in_thread

from .service import DataPlaneClient, open_grpcio_client
from .test_service_enforce import (
    BOUNDARIES_A,
    EXPECTED,
    TENANT_A,
    enforce_request,
    install_like_the_management_plane,
)
from .test_service_metrics import free_port, scrape, value

WAIT_S = 10.0


async def _query(client: DataPlaneClient, pb2: types.ModuleType, **fields: Any) -> Any:
    return await in_thread(client.call, "QueryTelemetry", pb2.QueryTelemetryRequest(**fields))


async def _wait_total(client: DataPlaneClient, pb2: types.ModuleType, total: int) -> Any:
    """The unfiltered page once ``total`` sessions are committed (the batch window)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        page = await _query(client, pb2, limit=500)
        if page.total_count >= total or time.monotonic() > deadline:
            return page
        await in_thread(time.sleep, 0.05)


async def test_every_enforce_decision_is_recorded_as_a_session(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    async with (
        open_service(tmp_path) as service,
        open_grpcio_client(grpcio_modules, service.port) as client,
    ):
        await install_like_the_management_plane(client, pb2, BOUNDARIES_A)
        responses = []
        for i, (c, drift, *_) in enumerate(EXPECTED):
            request = enforce_request(pb2, c, drift)
            # Unique ids: two of the calls share one (a reused request_id is one session).
            request.request_id = f"decision-{i}"
            responses.append(await in_thread(client.call, "Enforce", request))
        # A fail-closed one: no vector and no management plane URL to encode it.
        fail_closed_call = attrs.evolve(EXPECTED[0][0], id="no-encoder")
        responses.append(
            await in_thread(
                client.call,
                "Enforce",
                enforce_request(pb2, fail_closed_call, 0.0, with_vector=False),
            )
        )
        page = await _wait_total(client, pb2, len(responses))
        assert page.total_count == len(responses)
        for response in responses:
            got = await in_thread(
                client.call, "GetSession", pb2.GetSessionRequest(session_id=response.request_id)
            )
            session = json.loads(got.session_json)
            assert session["session_id"] == response.request_id
            assert session["decision_name"] == response.decision_name
            assert session["final_decision"] == response.decision
            assert session["drift_triggered"] == response.drift_triggered
            assert [r["rule_id"] for r in session["rules_evaluated"]] == [
                e.rule_id for e in response.evidence
            ]
            for rule, evidence in zip(session["rules_evaluated"], response.evidence, strict=True):
                assert rule["decision"] == evidence.decision
                assert rule["slice_similarities"] == list(evidence.similarities)
                assert rule["thresholds"] == list(evidence.thresholds)
                assert rule["scoring_mode"] == evidence.scoring_mode
            assert session["agent_id"] == "agent-7"
            assert session["tenant_id"] in (TENANT_A, "tenant-b")
            perf = session["performance"]
            assert perf["total_duration_us"] >= perf["evaluation_duration_us"]
            assert json.loads(session["intent_json"])["tenantId"] == session["tenant_id"]
        failed = json.loads(
            (
                await in_thread(
                    client.call,
                    "GetSession",
                    pb2.GetSessionRequest(session_id=responses[-1].request_id),
                )
            ).session_json
        )
        assert failed["decision_name"] == "DENY" and failed["error"]
        assert failed["rules_evaluated"] == []
        # "What did tenant A get denied?" by the original's filter and by name.
        blocked = await _query(client, pb2, tenant_id=TENANT_A, decision=0)
        tenants = [c.tenant_id for c, *_ in EXPECTED] + [fail_closed_call.tenant_id]
        want = [
            r.request_id
            for r, tenant in zip(responses, tenants, strict=True)
            if r.decision == 0 and tenant == TENANT_A
        ]
        assert len(want) > 3
        assert sorted(s.session_id for s in blocked.sessions) == sorted(want)
        denied = await _query(client, pb2, tenant_id=TENANT_A, decision_name="DENY")
        by_id = {s.session_id: s for s in denied.sessions}
        assert by_id[responses[0].request_id].deciding_rule_id == "fb-delete"
        assert set(by_id) == {
            r.request_id
            for r, tenant in zip(responses, tenants, strict=True)
            if r.decision_name == "DENY" and tenant == TENANT_A
        }


async def test_sessions_of_the_last_second_before_sigterm_survive_a_restart(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    # With a one-second window, only the flush on shutdown can have written the last ones.
    window = ("--telemetry-batch-window", "1")
    request_ids = []
    async with open_service(tmp_path, *window) as service:
        async with open_grpcio_client(grpcio_modules, service.port) as client:
            await install_like_the_management_plane(client, pb2, BOUNDARIES_A)
            started = time.monotonic()
            for i in range(40):
                c, drift, *_ = EXPECTED[i % len(EXPECTED)]
                request = enforce_request(pb2, c, drift)
                request.request_id = f"last-second-{i}"
                response = await in_thread(client.call, "Enforce", request)
                request_ids.append(response.request_id)
            assert time.monotonic() - started < 5
        assert await service.stop(signal.SIGTERM) == 0
        assert "Telemetry stopped: 40 sessions written, 0 dropped" in service.log
    async with (
        open_service(tmp_path) as service,
        open_grpcio_client(grpcio_modules, service.port) as client,
    ):
        page = await _query(client, pb2, limit=500)
        assert sorted(s.session_id for s in page.sessions) == sorted(request_ids)


async def test_requests_refused_with_invalid_argument_are_recorded_too(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    metrics_port = free_port()
    async with (
        open_service(tmp_path, "--metrics-port", str(metrics_port)) as service,
        open_grpcio_client(grpcio_modules, service.port) as client,
    ):
        await install_like_the_management_plane(client, pb2, BOUNDARIES_A)
        c, drift, *_ = EXPECTED[0]
        bad_vector = enforce_request(pb2, c, drift)
        bad_vector.request_id = "bad-vector"
        del bad_vector.intent_vector[5:]
        nan_vector = enforce_request(pb2, c, drift)
        nan_vector.request_id = ""  # the service gives the session a new UUID
        nan_vector.intent_vector[3] = math.nan
        bad_intent = pb2.EnforceRequest(
            intent_event_json=json.dumps({"tenantId": TENANT_A, "actor": {"id": "agent-7"}}),
            intent_vector=list(c.vector()),
            request_id="bad-intent",
        )
        errors = []
        for request in (bad_vector, nan_vector, bad_intent):
            outcome = await in_thread(client.outcome, "Enforce", request)
            assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome
            errors.append(outcome.details)
        assert "intent_vector has 5 values" in errors[0]
        decided = await in_thread(client.call, "Enforce", enforce_request(pb2, c, drift))
        page = await _wait_total(client, pb2, 4)
        assert page.total_count == 4

        by_id = {s.session_id: s for s in page.sessions}
        [generated] = set(by_id) - {"bad-vector", "bad-intent", decided.request_id}
        assert uuid.UUID(generated)
        for session_id, error in zip(("bad-vector", generated, "bad-intent"), errors, strict=True):
            summary = by_id[session_id]
            assert (summary.final_decision, summary.decision_name) == (0, "DENY")
            assert (summary.rules_evaluated_count, summary.deciding_rule_id) == (0, "")
            assert (summary.tenant_id, summary.agent_id) == (TENANT_A, "agent-7")
            got = await in_thread(
                client.call, "GetSession", pb2.GetSessionRequest(session_id=session_id)
            )
            session = json.loads(got.session_json)
            assert session["error"] == error
            assert (session["final_decision"], session["decision_name"]) == (0, "DENY")
            assert session["rules_evaluated"] == [] and session["events"][0]["type"] == "error"
            assert session["performance"]["total_duration_us"] >= 0
        vector_session = json.loads(
            (
                await in_thread(
                    client.call, "GetSession", pb2.GetSessionRequest(session_id="bad-vector")
                )
            ).session_json
        )
        assert vector_session["intent_json"] == bad_vector.intent_event_json
        assert vector_session["layer"] == ""
        # "What was tenant A blocked on" includes the refusals.
        blocked = await _query(client, pb2, tenant_id=TENANT_A, decision=0)
        assert {"bad-vector", "bad-intent", generated} <= {s.session_id for s in blocked.sessions}

        # Only the decision counts as one in the Enforce metrics; the refusals are in
        # the gRPC metrics by status.
        samples = await scrape(metrics_port)
        decisions = sum(
            value(samples, "guardrefresh_enforce_total", decision=name)
            for name in ("ALLOW", "DENY", "MODIFY", "STEP_UP", "DEFER")
        )
        assert decisions == 1
        assert value(samples, "guardrefresh_enforce_duration_seconds_count") == 1
        refused = value(
            samples,
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service="rule_installation.DataPlane",
            grpc_method="Enforce",
            grpc_code="InvalidArgument",
        )
        assert refused == 3
