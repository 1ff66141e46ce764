"""Telemetry under crashes and shutdowns: a real child process recording at full speed.

- SIGKILL at 20 random moments of heavy recording, on one database (each child starts
  on what the previous one left): afterwards ``PRAGMA integrity_check`` is ``ok`` and
  every session the writer had reported committed is there.
- SIGTERM: every session recorded before the signal is in the database afterwards, even
  with a one-second batch window (the flush on shutdown, not the window, saves them).
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from support.service import service_env

CHILD = Path(__file__).with_name("telemetry_child.py")
KILLS = 20
START_TIMEOUT_S = 30.0


def _start(db: Path, prefix: str, window: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(db), prefix, str(window)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=service_env(),
    )


def _wait_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    line = child.stdout.readline()
    assert line == "READY\n", (line, child.stderr.read() if child.stderr else "")
    assert time.monotonic() < deadline


def _ids(db: Path, prefix: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute(
            "SELECT session_id FROM sessions WHERE session_id LIKE ?", (prefix + "-%",)
        )
        return {row[0] for row in rows}


def test_sigkill_during_heavy_recording_loses_nothing_committed(tmp_path: Path) -> None:
    db = tmp_path / "telemetry.db"
    rng = random.Random(16)
    total_committed = 0
    for kill in range(KILLS):
        prefix = f"k{kill}"
        child = _start(db, prefix, window=0.05)
        try:
            _wait_ready(child)
            time.sleep(rng.uniform(0.05, 0.5))
        finally:
            child.send_signal(signal.SIGKILL)
            out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err
        committed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("C ")]
        reported = max(committed, default=0)
        present = _ids(db, prefix)
        missing = [i for i in range(reported) if f"{prefix}-{i}" not in present]
        assert not missing, f"kill {kill}: committed sessions lost: {missing[:10]}"
        total_committed += reported
    # The kills landed during real work, not before it started. (About 600 sessions a
    # kill on a quiet machine, 80 when other jobs took the CPU: the bound leaves room.)
    assert total_committed > KILLS * 20
    with contextlib.closing(sqlite3.connect(db)) as conn:
        count = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        kept = conn.execute("SELECT n FROM session_count").fetchone()[0]
    assert count == kept >= total_committed


def test_sigterm_writes_every_recorded_session_before_exit(tmp_path: Path) -> None:
    db = tmp_path / "telemetry.db"
    # A one-second window: without the flush, the last second would be lost.
    child = _start(db, "term", window=1.0)
    try:
        _wait_ready(child)
        time.sleep(0.7)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    flushed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("FLUSHED ")]
    assert len(flushed) == 1 and flushed[0] > 100, out[-500:]
    committed_before = max(
        (int(line.split()[1]) for line in out.splitlines() if line.startswith("C ")), default=0
    )
    assert committed_before < flushed[0], "the window should have held sessions back"
    present = _ids(db, "term")
    assert present == {f"term-{i}" for i in range(flushed[0])}
