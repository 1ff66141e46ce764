"""Fixtures of the fleet suite: grpcio modules and the fleet database.

The PostgreSQL server itself comes from ``tests/conftest.py`` (``postgres``, ``pg_dsn``:
a throwaway server per session, a fresh database per test; skipped with the package to
install where PostgreSQL is missing).
"""

from __future__ import annotations

import types

import pytest
from grpcio_support import generate_grpcio_modules


@pytest.fixture(scope="session")
def grpcio_modules(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """grpcio modules generated from proto/rule_installation.proto for this test run."""
    return generate_grpcio_modules(tmp_path_factory.mktemp("fleet_grpcio"))
