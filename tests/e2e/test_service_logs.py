"""--log-format json: every line the service writes is one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

from support.trio_service import open_service

from guardrefresh.proto import rule_installation as pb

from .service import open_grpclib_client, rule_set


async def test_json_log_lines_parse_and_carry_structured_fields(tmp_path: Path) -> None:
    async with open_service(tmp_path, "--log-format", "json") as service:
        async with open_grpclib_client(service.port) as aio:
            await aio.call(
                "install_rules", pb.InstallRulesRequest(agent_id="a", rules=rule_set("a", "a"))
            )
            await aio.call("refresh_rules", pb.RefreshRulesRequest())
        assert await service.stop() == 0
    events = [json.loads(line) for line in service.lines if line.strip()]
    assert len(events) == len([line for line in service.lines if line.strip()]) > 5
    for event in events:
        assert {"timestamp", "level", "logger", "message"} <= set(event)
        assert event["timestamp"].endswith("+00:00")
    refreshed = [e for e in events if e["logger"] == "guardrefresh.refresh._service"]
    assert {e["trigger"] for e in refreshed} == {"startup", "rpc"}
    assert all(
        isinstance(e["rules"], int) and isinstance(e["duration_ms"], float) for e in refreshed
    )
    assert any(e["message"] == f"Listening on 127.0.0.1:{service.port}" for e in events)
    installed = next(e for e in events if e["message"].startswith("Installed 4 rules"))
    assert installed["agent_id"] == "a" and installed["bridge_version"] == 1
    assert any(
        e["message"] == "Starting scheduled refresh with 21600 second interval" for e in events
    )
