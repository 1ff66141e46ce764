"""Fixtures and options of the reliability suite.

``--soak-seconds N`` (or the environment variable ``GUARDREFRESH_SOAK_SECONDS``) sets
how long the soak test runs; the default suits CI. pytest reads ``pytest_addoption``
only from conftest files it loads at startup, which this one is when the command line
names ``tests/reliability`` (or a file in it)::

    pytest tests/reliability/test_soak.py --soak-seconds 1800

For a plain ``pytest`` from the repository root use the environment variable::

    GUARDREFRESH_SOAK_SECONDS=1800 pytest tests/reliability/test_soak.py
"""

from __future__ import annotations

import os
import types

import pytest
from grpcio_support import generate_grpcio_modules

SOAK_ENV = "GUARDREFRESH_SOAK_SECONDS"
#: The CI soak: long enough for dozens of periodic refreshes and several compactions.
DEFAULT_SOAK_SECONDS = 120.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=None,
        help=f"How long the reliability soak test runs (default {DEFAULT_SOAK_SECONDS:.0f}; "
        f"env {SOAK_ENV}).",
    )


@pytest.fixture(scope="session")
def soak_seconds(pytestconfig: pytest.Config) -> float:
    """The soak duration: --soak-seconds, else $GUARDREFRESH_SOAK_SECONDS, else the default."""
    value = pytestconfig.getoption("soak_seconds", default=None)
    if value is None:
        value = float(os.environ.get(SOAK_ENV) or DEFAULT_SOAK_SECONDS)
    if not value >= 20:
        raise pytest.UsageError(
            f"soak seconds must be >= 20 (warm-up plus a measurement), got {value}"
        )
    return float(value)


@pytest.fixture(scope="session")
def grpcio_modules(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """grpcio modules generated from proto/rule_installation.proto for this test run."""
    return generate_grpcio_modules(tmp_path_factory.mktemp("reliability_grpcio"))
