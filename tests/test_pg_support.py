"""The throwaway PostgreSQL server of the tests (tests/pg_support.py) does what it says."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from pg_support import MISSING_REASON, PostgresError, PostgresServer, find_postgres_bin


def _psql(dsn: str, statement: str) -> subprocess.CompletedProcess[str]:
    """``psql`` over TCP with a DSN, as any client on another machine would connect."""
    bin_dir = find_postgres_bin()
    assert bin_dir is not None
    return subprocess.run(
        [str(bin_dir / "psql"), "-X", "-A", "-t", "-d", dsn, "-c", statement],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def _fake_install(root: Path, *versions: str) -> None:
    for version in versions:
        bin_dir = root / version / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl"):
            (bin_dir / tool).write_text("")


def test_find_postgres_bin_picks_the_newest_supported_version(tmp_path: Path) -> None:
    assert find_postgres_bin(tmp_path / "absent") is None
    _fake_install(tmp_path, "13", "14")
    assert find_postgres_bin(tmp_path) is None
    _fake_install(tmp_path, "15", "17")
    (tmp_path / "18").mkdir()  # a version without binaries does not count
    assert find_postgres_bin(tmp_path) == tmp_path / "17" / "bin"


def test_without_binaries_the_error_names_the_debian_package(tmp_path: Path) -> None:
    assert "Debian package postgresql is not installed" in MISSING_REASON
    with pytest.raises(PostgresError, match="Debian package postgresql"):
        PostgresServer.create(find_postgres_bin(tmp_path))


def test_the_server_listens_on_loopback_tcp_and_a_private_socket(
    postgres: PostgresServer,
) -> None:
    assert postgres.running
    result = _psql(postgres.dsn(), "SELECT inet_server_addr(), current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "127.0.0.1|postgres"
    assert (Path(postgres.host) / f".s.PGSQL.{postgres.port}").exists()
    # Only its owner may use the cluster's directory (the socket, the data).
    assert Path(postgres.host).stat().st_mode & 0o077 == 0
    assert postgres.sql("SHOW listen_addresses").strip() == "127.0.0.1"


def test_each_test_gets_a_fresh_database_which_is_dropped_after(
    postgres: PostgresServer, pg_dsn: str
) -> None:
    name = pg_dsn.rsplit("/", 1)[1]
    other = postgres.create_database()
    assert other != name
    assert _psql(pg_dsn, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)").returncode == 0
    # The other database does not see this one's table.
    assert "does not exist" in _psql(postgres.dsn(other), "SELECT * FROM t").stderr
    postgres.drop_database(other)
    listed = postgres.sql("SELECT datname FROM pg_database").split()
    assert name in listed
    assert other not in listed


def test_database_names_are_checked(postgres: PostgresServer) -> None:
    with pytest.raises(ValueError, match="not a plain database name"):
        postgres.create_database("x; DROP DATABASE postgres")


def test_the_server_can_be_stopped_and_started_again_on_the_same_port(
    postgres: PostgresServer, pg_dsn: str
) -> None:
    assert _psql(pg_dsn, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)").returncode == 0
    port = postgres.port
    with postgres.stopped():
        assert not postgres.running
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", port))
        assert _psql(pg_dsn, "SELECT 1").returncode != 0
    assert postgres.running
    assert postgres.port == port
    result = _psql(pg_dsn, "SELECT x FROM kept")
    assert result.stdout.strip() == "7", result.stderr


def test_stopped_starts_the_server_again_after_an_error(postgres: PostgresServer) -> None:
    with pytest.raises(KeyError), postgres.stopped():
        raise KeyError("boom")
    assert postgres.running


def test_a_failed_command_reports_its_output(postgres: PostgresServer) -> None:
    with pytest.raises(PostgresError, match="syntax error"):
        postgres.sql("SELEKT 1")


def test_destroy_stops_the_server_and_removes_its_directory() -> None:
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING_REASON)
        pytest.skip(MISSING_REASON)
    server = PostgresServer.create(bin_dir)
    try:
        assert server.running
        directory = server.directory
    finally:
        server.destroy()
    assert not directory.exists()
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", server.port))
