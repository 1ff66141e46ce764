"""Fleet telemetry end to end: Enforce on any replica, read the sessions on any replica.

Real ``python -m guardrefresh --replication`` processes on one throwaway PostgreSQL,
grpcio as the client.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

from e2e.test_service_enforce import BOUNDARIES_A, EXPECTED, enforce_request, install_request
from pg_support import PostgresServer
from support.waiting import wait_until

from .fleet_support import database_name, running_fleet

NAMES = ("a", "b")
PER_REPLICA = 3


def test_every_replica_reads_the_whole_fleets_sessions(
    tmp_path: Path, postgres: PostgresServer, pg_dsn: str, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    with running_fleet(tmp_path, pg_dsn, grpcio_modules, *NAMES) as fleet:
        first = fleet[NAMES[0]].client
        assert first is not None
        first.call("InstallRules", install_request(pb2, BOUNDARIES_A))
        decisions: dict[str, int] = {}
        for name in NAMES:
            client = fleet[name].client
            assert client is not None
            for i, (call, drift, *_) in enumerate(EXPECTED[:PER_REPLICA]):
                request = enforce_request(pb2, call, drift)
                request.request_id = f"{name}-{i}"
                decisions[request.request_id] = client.call("Enforce", request).decision
        everyone = set(decisions)
        for name in NAMES:
            client = fleet[name].client
            assert client is not None

            def page(client=client):  # type: ignore[no-untyped-def]
                return client.call("QueryTelemetry", pb2.QueryTelemetryRequest(limit=500))

            wait_until(lambda page=page: page().total_count == len(everyone), what="all sessions")
            summaries = page().sessions
            assert {s.session_id for s in summaries} == everyone
            assert {s.session_id: s.final_decision for s in summaries} == decisions
            for other in NAMES:
                # A session another replica recorded, in full, from this one.
                document = client.call(
                    "GetSession", pb2.GetSessionRequest(session_id=f"{other}-0")
                ).session_json
                assert json.loads(document)["session_id"] == f"{other}-0"
        for name in NAMES:
            fleet[name].process.wait_for_log("recording Enforce sessions in PostgreSQL")
    stored = postgres.sql("SELECT count(*) FROM telemetry_sessions", database_name(pg_dsn))
    assert int(stored) == len(everyone)
