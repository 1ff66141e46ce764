"""A ``python -m guardrefresh`` subprocess for synchronous tests (real process, loopback).

The end-to-end suite has a richer, Trio-based harness (tests/e2e/service.py); this is
the small blocking one that CLI and example tests share.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

LISTENING = re.compile(r"Listening on (127\.0\.0\.1):(\d+)\b")
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without GUARDREFRESH_* (a developer's own settings must not leak)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDREFRESH_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def running_service(workdir: Path, *args: str) -> Iterator[str]:
    """Start the service on a free port (metrics off) and yield ``127.0.0.1:PORT``.

    Stops it with SIGTERM on the way out (SIGKILL if it does not exit in time).
    """
    log = workdir / "service.log"
    command = [
        sys.executable, "-m", "guardrefresh", "--port", "0", "--metrics-port", "0",
        "--warm-storage", str(workdir / "data" / "warm_storage.bin"), *args,
    ]  # fmt: skip
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not (match := LISTENING.search(log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"service did not start (exit {process.poll()}):\n{log.read_text()}")
            time.sleep(0.05)
        yield f"{match.group(1)}:{match.group(2)}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
