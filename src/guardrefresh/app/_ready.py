"""The ready file (``--ready-file``): tells a launcher, without log scraping, that the
service is serving and on which ports.

The file appears, complete, once the service listens and its start-up is done: health
is SERVING then (in fleet mode health still waits for the first sync). It is written to
a temporary name beside it and renamed over it, and holds one JSON object::

    {"host": "127.0.0.1", "port": 50051, "metrics_port": 9464, "pid": 12345}

``metrics_port`` is null when metrics are off. A file left by an earlier run (killed
before it could clean up) is removed at start, before anything else, so a launcher
never mistakes it for this run's; this run's file is removed at exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import trio

from ._startup import StartupError

__all__ = ["ReadyFile"]

logger = logging.getLogger(__name__)


class ReadyFile:
    """The ready file at ``path``, or nothing at all when ``path`` is None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    async def clear(self) -> None:
        """Remove a file left by an earlier run. Raises :class:`StartupError` if it cannot."""
        if self.path is not None:
            try:
                await trio.to_thread.run_sync(_remove, self.path)
            except OSError as exc:
                raise StartupError(self._error("remove an old", exc)) from None

    async def write(self, host: str, port: int, metrics_port: int | None) -> None:
        """Write the file (atomically). Raises :class:`StartupError` if it cannot."""
        if self.path is None:
            return
        document = {"host": host, "port": port, "metrics_port": metrics_port, "pid": os.getpid()}
        try:
            await trio.to_thread.run_sync(_write_atomically, self.path, json.dumps(document))
        except OSError as exc:
            raise StartupError(self._error("write", exc)) from None
        logger.info("Wrote the ready file %s", self.path)

    async def remove(self) -> None:
        """Remove the file at exit; a failure is logged, never raised. Shielded: runs
        to the end even in a cancelled scope."""
        if self.path is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(_remove, self.path)
            except OSError as exc:
                logger.warning("%s", self._error("remove", exc))

    def _error(self, action: str, exc: OSError) -> str:
        return f"cannot {action} --ready-file {str(self.path)!r}: {exc.strerror or exc}"


def _write_atomically(path: Path, text: str) -> None:
    # Readers must never see a half-written file: write a temporary one, then rename.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as file:
            file.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
