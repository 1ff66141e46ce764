"""How to reach the fleet's database: :class:`EngineSettings`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import attrs

from ..config import ReplicationConfig, mask_dsn
from ._errors import PasswordFileError

__all__ = ["EngineSettings", "read_password_file"]


@attrs.frozen(kw_only=True)
class EngineSettings:
    """Connection settings of the fleet's PostgreSQL database.

    ``password`` None leaves it to libpq's environment (``PGPASSWORD``,
    ``~/.pgpass``), which asyncpg reads as libpq does. The DSN and the password are
    kept out of ``repr``: use :attr:`masked_dsn` in messages.
    """

    dsn: str = attrs.field(repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    #: Pooled connections for writes, pulls and reconciliation (plus one listener).
    pool_size: int = 4
    connect_timeout_s: float = 5.0
    #: Bound on one statement: a peer that stops answering fails the call instead of
    #: hanging it (installs of 10,000 rules write ~80 MB: keep room for that).
    command_timeout_s: float = 60.0
    #: TCP keepalives and TCP_USER_TIMEOUT (libpq's keepalives_idle, _interval, _count
    #: and tcp_user_timeout), set on the client socket and asked of the server, so a
    #: peer that vanished (a machine off, a partition) is noticed in about 20 s.
    keepalives_idle_s: int = 10
    keepalives_interval_s: int = 5
    keepalives_count: int = 2
    tcp_user_timeout_ms: int = 20_000

    @property
    def masked_dsn(self) -> str:
        return mask_dsn(self.dsn)

    @classmethod
    def from_config(cls, config: ReplicationConfig) -> EngineSettings:
        """Settings of ``config`` (which must be enabled); reads the password file.

        Raises :class:`PasswordFileError` when the file cannot be read, is empty, or
        may be read by group or others.
        """
        if config.dsn is None:
            raise ValueError("replication is not configured")
        password = None
        if config.password_file is not None:
            password = read_password_file(config.password_file)
        return cls(dsn=config.dsn, password=password)


def read_password_file(path: Path) -> str:
    """The password in ``path`` (its first line, without the line break)."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read(64 * 1024)
    except OSError as exc:
        raise PasswordFileError(
            f"cannot read --replication-password-file {str(path)!r}: {exc.strerror or exc}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PasswordFileError(
            f"--replication-password-file {str(path)!r} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PasswordFileError(
            f"--replication-password-file {str(path)!r} is not UTF-8 text"
        ) from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise PasswordFileError(f"--replication-password-file {str(path)!r} is empty")
    return password
