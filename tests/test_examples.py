"""Every Python example runs, as a user would run it (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
