"""The launcher of :mod:`support.service` for Trio tests: the same process, async waits.

Every wait polls (the log lines and the ready file are collected by the launcher's
own thread) with ``trio.sleep``, so it stays cancellable and never blocks the loop.
"""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from .service import START_TIMEOUT_S, STOP_TIMEOUT_S, ServiceError, ServiceProcess

_POLL_S = 0.01


class TrioService:
    """A running ``python -m guardrefresh`` seen from Trio code."""

    def __init__(self, process: ServiceProcess) -> None:
        self.sync = process

    @property
    def host(self) -> str:
        return self.sync.host

    @property
    def port(self) -> int:
        return self.sync.port

    @property
    def metrics_port(self) -> int | None:
        return self.sync.metrics_port

    @property
    def warm_storage(self) -> Path:
        return self.sync.warm_storage

    @property
    def lines(self) -> list[str]:
        return self.sync.lines

    @property
    def log(self) -> str:
        """Everything the service wrote to stderr so far."""
        return self.sync.log

    @property
    def returncode(self) -> int | None:
        return self.sync.returncode

    def find(self, pattern: str | re.Pattern[str]) -> re.Match[str] | None:
        """The first log line matching ``pattern`` (``re.search``), if any."""
        return self.sync.find(pattern)

    def check_log_clean(self) -> None:
        """:class:`ServiceError` if the service logged an error or a traceback."""
        self.sync.check_log_clean()

    def send_signal(self, signum: signal.Signals) -> None:
        self.sync.send_signal(signum)

    async def wait_ready(self, *, limit_s: float = START_TIMEOUT_S) -> None:
        with trio.move_on_after(limit_s):
            while not self.sync.poll_ready():  # noqa: ASYNC110 (a file, another process)
                await trio.sleep(_POLL_S)
            return
        raise ServiceError(f"service not ready within {limit_s}s; service log:\n{self.log}")

    async def wait_for_log(
        self, pattern: str | re.Pattern[str], *, limit_s: float = 10.0
    ) -> re.Match[str]:
        """Wait until a log line matches ``pattern``; :class:`ServiceError` with the log if
        none does in time."""
        with trio.move_on_after(limit_s):
            while True:
                eof = self.sync.eof  # read before looking: the last lines count too
                match = self.find(pattern)
                if match is not None:
                    return match
                if eof:
                    break
                await trio.sleep(_POLL_S)
        raise ServiceError(
            f"no log line matching {str(pattern)!r} within {limit_s}s "
            f"(exit code {self.returncode}); service log:\n{self.log}"
        )

    async def wait_exit(self, *, limit_s: float = STOP_TIMEOUT_S) -> int:
        """Wait for the process to exit and its log to end; :class:`ServiceError` if it hangs."""
        with trio.move_on_after(limit_s):
            while self.returncode is None or not self.sync.eof:  # noqa: ASYNC110
                await trio.sleep(_POLL_S)
            code = self.returncode
            assert code is not None
            return code
        raise ServiceError(f"service still running {limit_s}s later; service log:\n{self.log}")

    async def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        """Send ``signum`` and return the exit code."""
        self.send_signal(signum)
        return await self.wait_exit()


@asynccontextmanager
async def open_service(
    workdir: Path,
    *args: str,
    warm_storage: Path | None = None,
    env: Mapping[str, str] | None = None,
    metrics_port: int = 0,
    ready_file: Path | None = None,
) -> AsyncIterator[TrioService]:
    """Start the service on a free port of 127.0.0.1 and wait until it is ready.

    Runs in ``workdir`` with warm storage at ``workdir/data/warm_storage.bin`` unless
    told otherwise; ``args`` are further flags. When the block ends normally,
    :class:`ServiceError` is raised if the service logged an error or a traceback. On
    exit a still running service is killed (SIGKILL) and reaped, and its pipe closed,
    whatever happened.
    """
    process = await trio.to_thread.run_sync(
        lambda: ServiceProcess(
            workdir,
            *args,
            warm_storage=warm_storage,
            env=env,
            metrics_port=metrics_port,
            ready_file=ready_file,
        )
    )
    service = TrioService(process)
    try:
        await service.wait_ready()
        yield service
        service.check_log_clean()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(process.close)
