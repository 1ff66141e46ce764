"""Every Python example runs, as a user would run it (a real subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support.service import running_service, service_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_scheduler_integration_example_runs() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "scheduler_integration.py"),
            "--interval",
            "0.3",
            "--cycles",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(": 6 rules")
    assert "scheduler every 0.3s" in lines[1]
    assert lines[2] == "cycle 1: periodic refresh saw 6 rules (6 changed); rule-0 priority is now 2"
    assert lines[3] == "cycle 2: periodic refresh saw 6 rules (6 changed); rule-0 priority is now 3"
    assert lines[-1] == "done"


def test_client_example_installs_refreshes_and_reports(tmp_path: Path) -> None:
    """examples/client.py against a real service subprocess on a free loopback port."""
    with running_service(tmp_path) as service:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / "client.py"), "--target", service.target],
            capture_output=True,
            text=True,
            timeout=60,
            env=service_env(),
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        "installed 4 rules for 'support-assistant' "
        "(egress: 1, retrieval: 1, tool_call: 2); bridge version 1"
    )
    assert lines[1].startswith("refresh: ") and "; 4 rules hot (+0 -0 ~0) in " in lines[1]
    assert re.fullmatch(
        r"status: 4 hot / 4 warm rules, bridge version 1, last refresh \d+ ms ago "
        r"\(trigger rpc\), next in 6 h, stale: false",
        lines[2],
    )
    assert len(lines) == 3
