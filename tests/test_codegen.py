"""The committed generated code is exactly what scripts/generate_proto.py produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "src" / "guardrefresh" / "proto"


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    out = tmp_path / "proto"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh, committed = _files(out), _files(COMMITTED)
    assert sorted(fresh) == sorted(committed)
    for name, content in fresh.items():
        assert committed[name] == content, f"{name} differs: run scripts/generate_proto.py"


def test_the_contract_keeps_its_field_numbers() -> None:
    """A few numbers the Guard management plane depends on, read from the descriptor."""
    from guardrefresh.proto import rule_installation as pb

    def numbers(message: type) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert numbers(pb.InstallRulesRequest) == {
        "agent_id": 1,
        "rules": 2,
        "config_id": 3,
        "owner": 4,
    }
    rule = numbers(pb.RuleInstance)
    assert rule["policy_type"] == 10 and rule["slice_weights"] == 13 and rule["anchors"] == 9
    assert numbers(pb.RefreshRulesResponse)["duration_ms"] == 4
    service = pb.RuleInstance.DESCRIPTOR.file.services_by_name["DataPlane"]
    assert {m.name for m in service.methods} >= {
        "InstallRules",
        "RemoveAgentRules",
        "RemovePolicy",
        "GetRuleStats",
        "Enforce",
        "QueryTelemetry",
        "GetSession",
        "RefreshRules",
        "GetRule",
        "GetRefreshStatus",
    }
    assert pb.RuleInstance.DESCRIPTOR.file.package == "rule_installation"
