"""The one launcher of ``python -m guardrefresh`` for tests and benchmarks.

:class:`ServiceProcess` starts the service on an ephemeral port of 127.0.0.1 with
``--ready-file``, and is ready when that file appears holding this process's pid: no
log scraping. A reader thread collects stderr line by line all the time (a chatty
service never blocks on a full pipe); the log is there for assertions and for the
message of a failure.

Blocking, and standard library only: the reliability tests call it from plain
functions, the Trio tests through :mod:`support.trio_service`, and ``bench`` imports
this module as ``tests.support.service``. Failures raise :class:`ServiceError`, an
AssertionError (pytest reports it as a test failure) carrying the service log.
Every wait is bounded; every process started here is killed and reaped (and its
pipe closed) by :meth:`ServiceProcess.close`, which :func:`running_service` calls
whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

_BAD_LOG_LINE = re.compile(r" (ERROR|CRITICAL) |Traceback")
_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


class ServiceError(AssertionError):
    """The service did not do what the caller waited for; the message holds its log."""


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without GUARDREFRESH_* (a developer's settings must not leak), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDREFRESH_")}
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (for ports that 0 would turn off,
    such as ``--metrics-port``, and for addresses where nothing listens)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def service_command(*args: str) -> list[str]:
    """``python -m guardrefresh ARGS`` with this interpreter."""
    return [sys.executable, "-m", "guardrefresh", *args]


class ServiceProcess:
    """``python -m guardrefresh --port 0 ...`` in a subprocess, and its stderr log.

    ``args`` follow the launcher's own flags (so they can override them).
    ``ready_file`` is where the service is told to write its ready file (default: a
    new name in ``workdir``). ``prefix`` goes before the interpreter (for example ``prlimit --fsize=N --``,
    which execs it: the pid stays the service's). ``metrics_port`` 0 leaves metrics
    off. Use :func:`running_service` rather than this class directly.
    """

    def __init__(
        self,
        workdir: Path,
        *args: str,
        warm_storage: Path | None = None,
        prefix: Sequence[str] = (),
        metrics_port: int = 0,
        env: Mapping[str, str] | None = None,
        ready_file: Path | None = None,
    ) -> None:
        self.warm_storage = (
            warm_storage if warm_storage is not None else workdir / "data" / "warm_storage.bin"
        )
        # One name per launch: services started side by side in one directory must not
        # read (or remove) each other's.
        self.ready_file = ready_file or workdir / f"guardrefresh-ready-{uuid.uuid4().hex[:12]}.json"
        self.command = [
            *prefix,
            *service_command(
                "--port", "0", "--metrics-port", str(metrics_port),
                "--warm-storage", str(self.warm_storage), "--ready-file", str(self.ready_file),
                *args,
            ),
        ]  # fmt: skip
        self.host = ""
        self.port = 0
        #: The metrics port the service reported (None: metrics off).
        self.metrics_port: int | None = None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self.process = subprocess.Popen(
            self.command,
            cwd=workdir,
            env=service_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, name="service-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._eof = True
                self._changed.notify_all()

    # -- state ------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def target(self) -> str:
        """``HOST:PORT`` of the gRPC server, as the CLI's ``--target`` takes it."""
        return f"{self.host}:{self.port}"

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    @property
    def metrics_served(self) -> bool:
        """Whether the service reported a /metrics port in its ready file."""
        return self.metrics_port is not None

    def rss_kib(self, field: str = "VmRSS") -> int:
        """Resident memory in KiB: ``VmRSS`` (all), or ``RssAnon`` (heap and other
        anonymous memory, without the page cache of memory-mapped store files)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise ServiceError(f"no {field} in /proc/{self.pid}/status")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    # -- the log ----------------------------------------------------------------
    def find(self, pattern: str | re.Pattern[str], *, start: int = 0) -> re.Match[str] | None:
        """The first log line from index ``start`` on matching ``pattern`` (``re.search``)."""
        regex = re.compile(pattern)
        with self._changed:
            lines = self.lines[start:]
        for line in lines:
            match = regex.search(line)
            if match:
                return match
        return None

    def count(self, pattern: str | re.Pattern[str], *, start: int = 0) -> int:
        regex = re.compile(pattern)
        with self._changed:
            lines = self.lines[start:]
        return sum(1 for line in lines if regex.search(line))

    def mark(self) -> int:
        """The number of log lines so far: pass it as ``start`` to look only at newer ones."""
        with self._changed:
            return len(self.lines)

    @property
    def eof(self) -> bool:
        """Whether the whole log has been read (the process closed stderr)."""
        with self._changed:
            return self._eof

    def wait_for_log(
        self, pattern: str | re.Pattern[str], *, timeout: float = 10.0, start: int = 0
    ) -> re.Match[str]:
        """Wait until a log line matches; :class:`ServiceError` (with the log) if none does."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = self.find(pattern, start=start)
                if match is not None:
                    return match
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._changed.wait(remaining)
        raise ServiceError(
            f"no log line matching {str(pattern)!r} within {timeout}s "
            f"(exit code {self.returncode}); service log:\n{self.log}"
        )

    def check_log_clean(self, *, allow: str | None = None) -> int:
        """Raise :class:`ServiceError` if the service logged an error or a traceback.

        A record (a line and the traceback lines under it) whose first line matches
        ``allow`` is let through; returns how many were.
        """
        with self._changed:
            lines = list(self.lines)
        records: list[list[str]] = []
        for line in lines:
            if _RECORD_START.match(line) or not records:
                records.append([line])
            else:
                records[-1].append(line)
        allowed = 0
        for record in records:
            if not any(_BAD_LOG_LINE.search(line) for line in record):
                continue
            if allow is not None and re.search(allow, record[0]):
                allowed += 1
                continue
            raise ServiceError(f"service logged {record[0]!r}; service log:\n{self.log}")
        return allowed

    # -- lifecycle --------------------------------------------------------------
    def poll_ready(self) -> bool:
        """Whether the service is ready (its ready file is there); reads the ports then.

        Raises :class:`ServiceError` if the process has exited before that.
        """
        try:
            ready = json.loads(self.ready_file.read_text())
        except (FileNotFoundError, ValueError):  # not yet; the file is renamed in whole
            ready = None
        if ready is not None and ready.get("pid") == self.pid:
            self.host = str(ready["host"])
            self.port = int(ready["port"])
            self.metrics_port = ready["metrics_port"]
            return True
        if self.returncode is not None:
            self._reader.join(STOP_TIMEOUT_S)
            raise ServiceError(
                f"service exited with {self.returncode} before it was ready; "
                f"service log:\n{self.log}"
            )
        return False

    def wait_ready(self, *, timeout: float = START_TIMEOUT_S) -> None:
        """Wait (polling the ready file) until the service serves; :class:`ServiceError`
        if it exits first or takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if time.monotonic() > deadline:
                raise ServiceError(f"service not ready within {timeout}s; service log:\n{self.log}")
            time.sleep(0.02)

    def send_signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, *, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait for the exit; :class:`ServiceError` (with the log) if it hangs. The log is
        then complete."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ServiceError(
                f"service still running {timeout}s later; service log:\n{self.log}"
            ) from None
        self._reader.join(STOP_TIMEOUT_S)
        return code

    def stop(
        self, signum: signal.Signals = signal.SIGTERM, *, timeout: float = STOP_TIMEOUT_S
    ) -> int:
        self.send_signal(signum)
        return self.wait_exit(timeout=timeout)

    def close(self) -> None:
        """Kill the process if it still runs, reap it, end the reader, close the pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)
        if self.process.stderr is not None:
            self.process.stderr.close()


@contextlib.contextmanager
def running_service(
    workdir: Path,
    *args: str,
    warm_storage: Path | None = None,
    prefix: Sequence[str] = (),
    metrics_port: int = 0,
    env: Mapping[str, str] | None = None,
    check_log: bool = True,
    allow_log: str | None = None,
    start_timeout: float = START_TIMEOUT_S,
) -> Iterator[ServiceProcess]:
    """Start the service on a free port of 127.0.0.1 and wait until it is ready.

    When the block ends normally and ``check_log`` is set, :class:`ServiceError` is
    raised if the service logged an error or a traceback (other than records
    matching ``allow_log``). On exit the process is killed (if it still runs) and
    reaped, and its pipe closed.
    """
    service = ServiceProcess(
        workdir,
        *args,
        warm_storage=warm_storage,
        prefix=prefix,
        metrics_port=metrics_port,
        env=env,
    )
    try:
        service.wait_ready(timeout=start_timeout)
        yield service
        if check_log:
            service.check_log_clean(allow=allow_log)
    finally:
        service.close()
