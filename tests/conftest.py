from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from factories import make_rule as _make_rule

from guardrefresh.model import Rule


@pytest.fixture
def make_rule() -> Callable[..., Rule]:
    """The :func:`factories.make_rule` builder: ``make_rule("r1", seed=1, priority=3)``."""
    return _make_rule


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Where a fresh warm store lives: the manifest path inside an empty directory."""
    return tmp_path / "warm_storage.bin"
