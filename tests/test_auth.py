"""Admin token checks (unit level; the end-to-end tests use a real service)."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpclib import GRPCError, Status

from guardrefresh.server._auth import MUTATING_METHODS, AdminAuth, TokenFileError

INSTALL = "/rule_installation.DataPlane/InstallRules"
GET = "/rule_installation.DataPlane/GetRule"
HEALTH = "/grpc.health.v1.Health/Check"


def token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_mutating_calls_need_the_token(tmp_path: Path) -> None:
    auth = AdminAuth.from_file(token_file(tmp_path, "s3cret-token\n"))
    auth.check(INSTALL, {"authorization": "Bearer s3cret-token"})
    for metadata in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-token"}):
        with pytest.raises(GRPCError) as info:
            auth.check(INSTALL, metadata)
        assert info.value.status is Status.UNAUTHENTICATED
        assert "s3cret" not in str(info.value.message)
    assert {m.rsplit("/", 1)[1] for m in MUTATING_METHODS} == {
        "InstallRules",
        "RemovePolicy",
        "RemoveAgentRules",
        "RefreshRules",
    }


def test_reads_stay_open_unless_protected() -> None:
    open_reads = AdminAuth("t")
    open_reads.check(GET, {})
    protected = AdminAuth("t", protect_reads=True)
    with pytest.raises(GRPCError):
        protected.check(GET, {})
    protected.check(GET, {"authorization": "Bearer t"})
    protected.check(HEALTH, {})  # probes carry no credentials


def test_the_token_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    auth = AdminAuth("hunter2-token")
    with pytest.raises(GRPCError):
        auth.check(INSTALL, {"authorization": "Bearer hunter2-tokex"})
    assert "Refused" in caplog.text
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize(
    ("text", "mode", "problem"),
    [
        ("tok", 0o644, "accessible by group or others"),
        ("", 0o600, "one token without spaces"),
        ("two words", 0o600, "one token without spaces"),
    ],
)
def test_unusable_token_files_are_refused(
    tmp_path: Path, text: str, mode: int, problem: str
) -> None:
    with pytest.raises(TokenFileError, match=problem):
        AdminAuth.from_file(token_file(tmp_path, text, mode))
    with pytest.raises(TokenFileError, match="cannot read"):
        AdminAuth.from_file(tmp_path / "missing")
