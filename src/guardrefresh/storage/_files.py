"""The files of one warm store: their names (from ``_names``), the writers' lock, and
finding leftovers.

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
import shutil
from collections.abc import Iterator
from pathlib import Path

import attrs

from ._fs import DIR_MODE, FILE_MODE, fsync_dir, translate_os_error
from ._names import (
    data_file_generation,
    journal_path,
    lock_path,
    snapshot_path,
    working_set_path,
)


@attrs.frozen
class StoreFiles:
    """Every file name of the store whose manifest is ``path``."""

    path: Path = attrs.field(converter=Path)

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def lock(self) -> Path:
        return lock_path(self.path)

    @property
    def hot(self) -> Path:
        return working_set_path(self.path)

    def snapshot(self, generation: int) -> Path:
        return snapshot_path(self.path, generation)

    def journal(self, generation: int) -> Path:
        return journal_path(self.path, generation)

    def data_files(self) -> list[Path]:
        """Every snapshot and journal beside the manifest, of any generation, sorted."""
        return sorted(
            p
            for p in self.directory.iterdir()
            if data_file_generation(self.path, p.name) is not None
        )

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
        for entry in self.directory.iterdir():
            generation = data_file_generation(self.path, entry.name)
            if generation is not None and generation != keep:
                with contextlib.suppress(OSError):
                    entry.unlink()
        fsync_dir(self.directory)

    def set_aside(self) -> Path:
        """Move the manifest and every data file into ``<manifest>.damaged/`` (replacing
        what an earlier call left there); returns that directory.

        For a store that is only a cache of another source (a fleet replica): its
        damaged files are kept for inspection, out of the way of a new empty store.
        The caller holds the writers' lock. Raises :class:`OSError`.
        """
        aside = self.path.with_name(self.path.name + ".damaged")
        if aside.is_dir():
            shutil.rmtree(aside)
        aside.mkdir(mode=DIR_MODE)
        for entry in [self.path, *self.data_files()]:
            with contextlib.suppress(FileNotFoundError):
                entry.rename(aside / entry.name)
        fsync_dir(self.directory)
        return aside

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
