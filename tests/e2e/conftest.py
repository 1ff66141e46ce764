"""Fixtures of the end-to-end tests (real processes, signals, sockets and clock)."""

from __future__ import annotations

import types
from collections.abc import Iterator

import pytest
from grpcio_support import generate_grpcio_modules


@pytest.fixture(scope="session")
def grpcio_modules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[types.SimpleNamespace]:
    """grpcio modules generated from proto/rule_installation.proto for this test run."""
    out_dir = tmp_path_factory.mktemp("grpcio_generated")
    yield generate_grpcio_modules(out_dir)
