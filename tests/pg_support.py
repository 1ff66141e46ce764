"""A throwaway PostgreSQL server for the tests: one per test session, real, on loopback.

:func:`find_postgres_bin` finds Debian's PostgreSQL binaries (15 or newer, under
``/usr/lib/postgresql/<version>/bin``); :class:`PostgresServer` creates a cluster in a
temporary directory with ``initdb`` and runs it with ``pg_ctl``, both as the
``postgres`` user when the tests run as root (``initdb`` refuses root). The server
listens on 127.0.0.1 at a free port and on a unix socket in its directory, trusts
every local connection (no password), and writes nothing durable (``fsync`` off).

Tests get a fresh database each (:meth:`PostgresServer.create_database`) and may stop
and start the server mid-test (:meth:`PostgresServer.stopped`) to see what an outage
does; the port stays the same, so clients reconnect to the same DSN.

Everything here is blocking (subprocesses): call it from sync fixtures, or from async
tests through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from support.service import free_port

__all__ = [
    "MIN_VERSION",
    "MISSING_REASON",
    "PostgresError",
    "PostgresServer",
    "find_postgres_bin",
]

#: The oldest major version the project supports (Debian 12's).
MIN_VERSION: Final = 15
#: The skip reason when no server binaries are installed (CI installs them: .ci/run).
MISSING_REASON: Final = (
    "Debian package postgresql is not installed (no initdb of version "
    f"{MIN_VERSION}+ under /usr/lib/postgresql/*/bin); .ci/run installs it"
)
_SEARCH_ROOT: Final = Path("/usr/lib/postgresql")
_SERVICE_USER: Final = "postgres"
_START_TIMEOUT_S: Final = 30
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresError(RuntimeError):
    """A PostgreSQL command failed (``str()`` carries its output and the server log's tail)."""


def find_postgres_bin(root: Path = _SEARCH_ROOT) -> Path | None:
    """The ``bin`` directory of the newest installed PostgreSQL >= :data:`MIN_VERSION`."""
    found: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for child in root.iterdir():
            if child.name.isdigit() and int(child.name) >= MIN_VERSION:
                bin_dir = child / "bin"
                if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
                    found.append((int(child.name), bin_dir))
    return max(found)[1] if found else None


class PostgresServer:
    """One PostgreSQL cluster in ``directory``, run by :meth:`start` / :meth:`stop`.

    Use :meth:`create` (which also starts it) or the ``postgres`` fixture; call
    :meth:`destroy` at the end (stops it and removes the directory).
    """

    user: Final = "postgres"

    def __init__(self, bin_dir: Path, directory: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.directory = directory
        self.port = port
        self.data = directory / "data"
        self.log = directory / "log"
        self._names = itertools.count(1)
        # As root, the server's files and processes belong to the postgres user.
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", _SERVICE_USER, "--"]

    # ---------------------------------------------------------------- lifecycle ---

    @classmethod
    def create(cls, bin_dir: Path | None) -> PostgresServer:
        """initdb a new cluster in a fresh temporary directory and start it.

        ``bin_dir`` is :func:`find_postgres_bin`'s answer: None raises
        :class:`PostgresError` with :data:`MISSING_REASON`.
        """
        if bin_dir is None:
            raise PostgresError(MISSING_REASON)
        directory = Path(tempfile.mkdtemp(prefix="guardrefresh-pg-"))
        server = cls(bin_dir, directory, free_port())
        try:
            if server._as:
                # The service user must own its cluster and socket directory.
                entry = pwd.getpwnam(_SERVICE_USER)
                os.chown(directory, entry.pw_uid, entry.pw_gid)
            os.chmod(directory, 0o700)
            server._run(
                "initdb",
                "-D",
                str(server.data),
                "-A",
                "trust",
                "-U",
                server.user,
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            )
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    @property
    def host(self) -> str:
        """The unix socket directory (libpq's ``host`` for a local socket)."""
        return str(self.directory)

    @property
    def running(self) -> bool:
        """True when ``pg_ctl status`` finds the server running."""
        return (
            subprocess.run(
                [*self._as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )

    def start(self) -> None:
        """Start the server (same port) and wait until it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} "
            # A test server: nothing has to survive a power cut, everything should be quick.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "start",
            "-o",
            options,
        )

    def stop(self) -> None:
        """Stop the server now (fast mode: open connections are cut) and wait for it."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Stop the server for the block, start it again afterwards (also after an error)."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def destroy(self) -> None:
        """Stop the server if it runs and remove its directory."""
        if self.data.exists() and self.running:
            with contextlib.suppress(PostgresError):
                self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    # ---------------------------------------------------------------- databases ---

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL of ``dbname`` over TCP on 127.0.0.1 (no password needed)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a fresh unique name unless given) and return its name."""
        name = name or f"test_{os.getpid()}_{next(self._names)}"
        self._check_name(name)
        self.sql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever is still connected to it."""
        self._check_name(name)
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run one SQL statement with ``psql`` over the unix socket; its unaligned output."""
        return self._run(
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            dbname,
            "-c",
            statement,
        )

    # ------------------------------------------------------------------ helpers ---

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")

    def _run(self, tool: str, *args: str) -> str:
        binary = self.bin_dir / tool
        if not binary.exists():
            found = shutil.which(tool)
            binary = Path(found) if found else binary
        result = subprocess.run(
            [*self._as, str(binary), *args],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=self.directory,
        )
        if result.returncode != 0:
            log = ""
            with contextlib.suppress(OSError):
                log = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise PostgresError(
                f"{tool} {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n-- server log tail --\n{log}"
            )
        return result.stdout
