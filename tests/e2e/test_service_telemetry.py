"""QueryTelemetry, GetSession and ``guardrefresh sessions``/``session`` against a real service.

The sessions are written into the service's telemetry database (next to its warm
storage) before it starts, with the store's own writer; the service then serves them.
grpcio is the independent client for the status codes; the CLI runs in-process.
"""

from __future__ import annotations

import json
import time
import types
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpcio_support import DataPlaneClient
from support.service import running_service
from telemetry_support import make_session

from guardrefresh.cli import main
from guardrefresh.telemetry import EnforcementSession, SessionWriter, TelemetryRecorder

NOW_MS = int(time.time() * 1000)
DECISIONS = ("ALLOW", "DENY", "MODIFY", "STEP_UP", "DEFER")


def _sessions() -> list[EnforcementSession]:
    sessions = [
        make_session(
            f"s{i:03d}",
            timestamp_ms=NOW_MS - 60_000 - i * 1000,
            tenant=f"tenant-{i % 3}",
            agent=f"agent-{i % 2}",
            decision=DECISIONS[i % 5],
            rules=1 + i % 3,
            total_us=1000 + i,
        )
        for i in range(60)
    ]
    # Two hours old: outside --since 1h.
    sessions.append(
        make_session("old", timestamp_ms=NOW_MS - 7_200_000, tenant="tenant-1", decision="DENY")
    )
    return sessions


SESSIONS = _sessions()


def _populate(workdir: Path) -> None:
    recorder = TelemetryRecorder()
    writer = SessionWriter(workdir / "data" / "telemetry.db", recorder)
    for session in SESSIONS:
        recorder.record(session)
    writer.stop()
    writer.run()
    assert writer.counters.committed == len(SESSIONS)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    workdir = tmp_path_factory.mktemp("telemetry-service")
    _populate(workdir)
    with running_service(workdir) as process:
        yield process.target, process.port


@pytest.fixture
def client(
    service: tuple[str, int], grpcio_modules: types.SimpleNamespace
) -> Iterator[DataPlaneClient]:
    with DataPlaneClient(grpcio_modules, service[1]) as c:
        yield c


def test_query_telemetry_filters_pages_and_counts(client: DataPlaneClient) -> None:
    pb2 = client.pb2
    page = client.call("QueryTelemetry", pb2.QueryTelemetryRequest(limit=10))
    assert page.total_count == len(SESSIONS)
    assert [s.session_id for s in page.sessions] == [f"s{i:03d}" for i in range(10)]
    first = page.sessions[0]
    assert (first.tenant_id, first.agent_id, first.layer) == ("tenant-0", "agent-0", "L4")
    assert first.final_decision == 1 and first.intent_summary == "web_search"
    assert first.rules_evaluated_count == 1 and first.duration_us == 1000
    assert first.decision_name == "ALLOW" and first.deciding_rule_id == "deciding-allow"
    # decision=0 is a filter (blocked: DENY, STEP_UP, DEFER), absent or -1 is none.
    blocked = client.call("QueryTelemetry", pb2.QueryTelemetryRequest(decision=0, limit=500))
    expected = [s for s in SESSIONS if s.final_decision == 0]
    assert blocked.total_count == len(expected) == len(blocked.sessions)
    assert all(s.final_decision == 0 for s in blocked.sessions)
    everything = client.call("QueryTelemetry", pb2.QueryTelemetryRequest(decision=-1))
    assert everything.total_count == len(SESSIONS) and len(everything.sessions) == 50
    one_hour = client.call(
        "QueryTelemetry",
        pb2.QueryTelemetryRequest(
            tenant_id="tenant-1", decision_name="DENY", start_time_ms=NOW_MS - 3_600_000
        ),
    )
    want = [
        s.session_id for s in SESSIONS if s.tenant_id == "tenant-1" and s.decision_name == "DENY"
    ]
    assert [s.session_id for s in one_hour.sessions] == [w for w in want if w != "old"]
    deep = client.call("QueryTelemetry", pb2.QueryTelemetryRequest(limit=5, offset=58))
    assert [s.session_id for s in deep.sessions] == ["s058", "s059", "old"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limit": -1}, "limit must be >= 0"),
        ({"offset": -1}, "offset must be >= 0"),
        ({"start_time_ms": 2000, "end_time_ms": 1000}, "before start_time_ms"),
        ({"decision": 3}, "decision must be 0"),
        ({"decision_name": "maybe"}, "decision_name must be one of"),
    ],
)
def test_bad_filters_are_invalid_argument(
    client: DataPlaneClient, fields: dict[str, object], message: str
) -> None:
    outcome = client.outcome("QueryTelemetry", client.pb2.QueryTelemetryRequest(**fields))
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert message in outcome.details


def test_get_session_returns_the_document_or_not_found(client: DataPlaneClient) -> None:
    pb2 = client.pb2
    response = client.call("GetSession", pb2.GetSessionRequest(session_id="s007"))
    document = json.loads(response.session_json)
    assert document == json.loads(SESSIONS[7].to_json())
    missing = client.outcome("GetSession", pb2.GetSessionRequest(session_id="nope"))
    assert missing.code is grpc.StatusCode.NOT_FOUND and "nope" in missing.details
    empty = client.outcome("GetSession", pb2.GetSessionRequest(session_id=""))
    assert empty.code is grpc.StatusCode.INVALID_ARGUMENT


def test_cli_sessions_answers_what_a_tenant_was_denied_in_the_last_hour(
    service: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    target = service[0]
    args = ["sessions", "--target", target, "--tenant", "tenant-1", "--decision", "deny"]
    assert main([*args, "--since", "1h"]) == 0
    out = capsys.readouterr().out.splitlines()
    header, *rows, footer = out
    assert header.split() == [
        "TIME", "(UTC)", "TENANT", "AGENT", "DECISION", "DECIDING", "RULE", "RULES", "TOTAL", "MS",
    ]  # fmt: skip
    want = [s for s in SESSIONS if s.tenant_id == "tenant-1" and s.decision_name == "DENY"]
    want = [s for s in want if s.session_id != "old"]
    assert len(rows) == len(want) > 0
    for row, session in zip(rows, want, strict=True):
        cells = row.split()
        assert cells[2:5] == ["tenant-1", session.agent_id, "DENY"]
        assert cells[5] == "deciding-deny"
        assert cells[6] == str(session.rules_evaluated)
        assert cells[7] == f"{session.durations.total_us / 1000:.3f}"
    assert footer == f"sessions 1-{len(want)} of {len(want)}, newest first"

    assert main([*args, "--json", "--limit", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_count"] == len(want) + 1  # no --since: the old one counts too
    assert len(data["sessions"]) == 2 and data["sessions"][0]["decision_name"] == "DENY"


def test_cli_session_prints_the_evidence_table(
    service: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["session", "s002", "--target", service[0]]) == 0
    out = capsys.readouterr().out
    assert "session:" in out and "s002" in out
    assert "decision:        MODIFY (final_decision 1)" in out
    assert "deciding rule:   deciding-modify" in out
    lines = out.splitlines()
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == [
        "RULE",
        "NAME",
        "RESULT",
        "SIMILARITIES",
        "THRESHOLDS",
        "MODE",
        "SLICE",
    ]
    assert [line.split()[0] for line in table[1:]] == ["s002-r0", "s002-r1", "deciding-modify"]
    assert "no match" in table[1] and "match" in table[3]
    assert main(["session", "s002", "--json", "--target", service[0]]) == 0
    assert json.loads(capsys.readouterr().out)["session_id"] == "s002"
    assert main(["session", "missing", "--target", service[0]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("guardrefresh: error: NOT_FOUND: Session not found: missing")


def test_cli_refuses_bad_times(
    service: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sessions", "--target", service[0], "--since", "yesterday"]) == 2
    assert "not a time: 'yesterday'" in capsys.readouterr().err
    assert main(["sessions", "--target", service[0], "--since", "1h", "--until", "2h"]) == 2
    assert "--until is before --since" in capsys.readouterr().err


def test_without_telemetry_the_reads_fail_with_failed_precondition(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    with (
        running_service(tmp_path, "--no-telemetry") as process,
        DataPlaneClient(grpcio_modules, process.port) as client,
    ):
        for method, request in (
            ("QueryTelemetry", client.pb2.QueryTelemetryRequest()),
            ("GetSession", client.pb2.GetSessionRequest(session_id="x")),
        ):
            outcome = client.outcome(method, request)
            assert outcome.code is grpc.StatusCode.FAILED_PRECONDITION, outcome
            assert "--no-telemetry" in outcome.details
    assert not (tmp_path / "data" / "telemetry.db").exists()


def test_telemetry_reads_need_the_token_with_auth_reads(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    token = tmp_path / "token"
    token.write_text("telemetry-token\n")
    token.chmod(0o600)
    args = ("--admin-token-file", str(token), "--auth-reads")
    with (
        running_service(tmp_path, *args) as process,
        DataPlaneClient(grpcio_modules, process.port) as client,
    ):
        for method, request in (
            ("QueryTelemetry", client.pb2.QueryTelemetryRequest()),
            ("GetSession", client.pb2.GetSessionRequest(session_id="x")),
        ):
            refused = client.outcome(method, request)
            assert refused.code is grpc.StatusCode.UNAUTHENTICATED, refused
            allowed = client.stub.QueryTelemetry(
                client.pb2.QueryTelemetryRequest(),
                metadata=(("authorization", "Bearer telemetry-token"),),
                timeout=10,
            )
            assert allowed.total_count == 0
