from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from factories import make_rule as _make_rule
from pg_support import MISSING_REASON, PostgresServer, find_postgres_bin

from guardrefresh.model import Rule


@pytest.fixture
def make_rule() -> Callable[..., Rule]:
    """The :func:`factories.make_rule` builder: ``make_rule("r1", seed=1, priority=3)``."""
    return _make_rule


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Where a fresh warm store lives: the manifest path inside an empty directory."""
    return tmp_path / "warm_storage.bin"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole test session (see ``pg_support``).

    Skips (with the package to install) where PostgreSQL is missing; under CI
    (``CI=true``, where ``.ci/run`` installs it) a missing server fails instead, so a
    green run cannot hide skipped PostgreSQL tests.
    """
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: {MISSING_REASON}")
        pytest.skip(MISSING_REASON)
    server = PostgresServer.create(bin_dir)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database of the session's server; dropped afterwards."""
    name = postgres.create_database()
    try:
        yield postgres.dsn(name)
    finally:
        if not postgres.running:
            # A test that stopped the server and failed before starting it again.
            postgres.start()
        postgres.drop_database(name)
