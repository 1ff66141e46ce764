"""Admin authentication: a bearer token guarding the mutating RPCs.

With an admin token configured, InstallRules, RemovePolicy, RemoveAgentRules and
RefreshRules need ``authorization: Bearer <token>`` metadata; read-only RPCs stay
open unless reads are protected too. The health service always stays open (probes
carry no credentials). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from grpclib import GRPCError, Status

logger = logging.getLogger(__name__)

_SERVICE = "/rule_installation.DataPlane/"
MUTATING_METHODS = frozenset(
    _SERVICE + name for name in ("InstallRules", "RemovePolicy", "RemoveAgentRules", "RefreshRules")
)
#: Never behind the token: orchestrators' probes cannot send one.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class TokenFileError(Exception):
    """The admin token file cannot be used; ``str()`` says why (never the token)."""


class AdminAuth:
    """Checks the admin bearer token of incoming calls."""

    def __init__(self, token: str, *, protect_reads: bool = False) -> None:
        if not token:
            raise ValueError("the admin token must not be empty")
        self._expected = f"Bearer {token}".encode()
        self.protect_reads = protect_reads

    @classmethod
    def from_file(cls, path: Path, *, protect_reads: bool = False) -> AdminAuth:
        """Read the token (surrounding whitespace ignored) from a file only its owner can read."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TokenFileError(
                f"cannot read admin token file {str(path)!r}: {exc.strerror}"
            ) from None
        try:
            st = os.fstat(fd)
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise TokenFileError(
                    f"admin token file {str(path)!r} is accessible by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
                )
            raw = os.read(fd, 65536)
        finally:
            os.close(fd)
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise TokenFileError(f"admin token file {str(path)!r} is not ASCII text") from None
        if not token or any(ch.isspace() for ch in token):
            raise TokenFileError(
                f"admin token file {str(path)!r} must hold one token without spaces"
            )
        return cls(token, protect_reads=protect_reads)

    def requires_token(self, method: str) -> bool:
        if method in OPEN_METHODS:
            return False
        return method in MUTATING_METHODS or self.protect_reads

    def check(self, method: str, metadata: Mapping[str, str | bytes]) -> None:
        """Raise UNAUTHENTICATED unless the call may proceed. Nothing has run yet then."""
        if not self.requires_token(method):
            return
        given = metadata.get("authorization", "")
        given_bytes = given.encode("latin-1", "replace") if isinstance(given, str) else given
        # compare_digest: the time taken does not tell how much of the token matched.
        if not hmac.compare_digest(given_bytes, self._expected):
            logger.warning(
                "Refused %s: %s admin token",
                method,
                "missing" if not given else "wrong",
                extra={"method": method},
            )
            raise GRPCError(
                Status.UNAUTHENTICATED,
                "this call needs the admin token: metadata 'authorization: Bearer <token>'",
            )
