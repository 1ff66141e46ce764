"""Every Python example runs, as a user would run it (a real subprocess)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
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


def test_client_example_installs_refreshes_and_reports(tmp_path: Path) -> None:
    """examples/client.py against a real service subprocess on a free loopback port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDREFRESH_")}
    log = tmp_path / "service.log"
    with log.open("wb") as stderr:
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "guardrefresh",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--warm-storage",
                str(tmp_path / "data" / "warm_storage.bin"),
            ],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"Listening on (\S+):(\d+)\b", log.read_text())):
            assert service.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / "client.py"), "--target", f"{match[1]}:{match[2]}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
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
