"""The files of one warm store: their names, the writers' lock, and finding leftovers.

For a store at ``warm_storage.bin``::

    warm_storage.bin                 manifest
    warm_storage.bin.<gen>.snap      snapshot of generation <gen>
    warm_storage.bin.<gen>.journal   journal of generation <gen>
    warm_storage.bin.lock            writers' advisory lock (flock)
    warm_storage.bin.hot             the cache's working set (written by the app)
    .warm_storage.bin*.tmp-<pid>     a write in progress (or left by a writer that died)

All methods block (directory listings, open, flock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

import attrs

from ._fs import FILE_MODE, fsync_dir, translate_os_error


@attrs.frozen
class StoreFiles:
    """Every file name of the store whose manifest is ``path``."""

    path: Path = attrs.field(converter=Path)

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def hot(self) -> Path:
        return self.path.with_name(self.path.name + ".hot")

    def snapshot(self, generation: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{generation:08d}.snap")

    def journal(self, generation: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{generation:08d}.journal")

    def data_files(self) -> list[Path]:
        """Every snapshot and journal beside the manifest, of any generation, sorted."""
        pattern = re.compile(re.escape(self.path.name) + r"\.\d{8}\.(snap|journal)$")
        return sorted(p for p in self.directory.iterdir() if pattern.match(p.name))

    def crash_leftovers(self) -> list[Path]:
        """Temp files of store writes whose writer process is gone."""
        pattern = re.compile(
            r"\." + re.escape(self.path.name) + r"(\.\d{8}\.(snap|journal))?\.tmp-(\d+)$"
        )
        found = []
        for entry in self.directory.iterdir():
            match = pattern.match(entry.name)
            if match is not None and not _pid_alive(int(match.group(3))):
                found.append(entry)
        return found

    def remove_other_generations(self, keep: int) -> None:
        """Remove the snapshots and journals of every generation but ``keep`` (best effort)."""
        pattern = re.compile(re.escape(self.path.name) + r"\.(\d{8})\.(snap|journal)$")
        for entry in self.directory.iterdir():
            match = pattern.match(entry.name)
            if match and int(match.group(1)) != keep:
                with contextlib.suppress(OSError):
                    entry.unlink()
        fsync_dir(self.directory)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' advisory lock (blocks until other writers release it)."""
        try:
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise translate_os_error(exc, self.lock, "create") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
