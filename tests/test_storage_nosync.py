"""Warm storage without fsync (a fleet replica's appends) and setting a damaged store aside.

Real files. The fsync calls are counted by wrapping the real functions: what a power
loss would keep cannot be observed from a test, so the test checks that none is asked for,
and that the commit is still complete and verified for any reader (and a new process).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from factories import make_rule

from guardrefresh.storage import CorruptStoreError, SegmentColumns, WarmStore


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def counted(fd: int, _real=real, _name=name) -> None:  # type: ignore[no-untyped-def]
            calls.append(_name)
            _real(fd)

        monkeypatch.setattr(os, name, counted)
    return calls


@pytest.mark.parametrize("durable", [False, True])
def test_append_columns_commits_atomically_and_syncs_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    store = WarmStore(tmp_path / "warm_storage.bin")
    table = store.open()
    calls = _count_syncs(monkeypatch)
    for version in (5, 6):
        columns = SegmentColumns.from_rules([make_rule(f"r{version}")], bridge_version=version)
        table = store.append_columns(table, columns, durable=durable)
    assert bool(calls) is durable
    if durable:  # journal fdatasync, manifest fsync, directory fsync, per commit
        assert sorted(calls) == ["fdatasync"] * 2 + ["fsync"] * 4
    # Another reader verifies the whole store: both commits, checksums and all.
    other = WarmStore(tmp_path / "warm_storage.bin")
    loaded = other.load()
    assert loaded.bridge_version == 6
    assert sorted(ref.rule_id for ref in loaded.iter_refs()) == ["r5", "r6"]
    other.close()
    store.close()
    # No temp file is left behind by the rename path.
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_set_aside_damaged_moves_the_files_and_open_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "warm_storage.bin"
    store = WarmStore(path)
    table = store.open()
    store.append_columns(
        table, SegmentColumns.from_rules([make_rule("r1")], bridge_version=3), durable=False
    )
    store.close()
    path.write_bytes(b"")  # a rename that reached the disk before its content
    damaged = WarmStore(path)
    with pytest.raises(CorruptStoreError):
        damaged.open()
    aside = damaged.set_aside_damaged()
    assert aside == tmp_path / "warm_storage.bin.damaged"
    assert sorted(p.name for p in aside.iterdir()) == [
        "warm_storage.bin",
        "warm_storage.bin.00000001.journal",
        "warm_storage.bin.00000001.snap",
    ]
    fresh = damaged.open()
    assert len(fresh) == 0
    # A second time replaces what the first left, rather than piling up.
    damaged.close()
    path.write_bytes(b"x")
    again = WarmStore(path).set_aside_damaged()
    assert (again / "warm_storage.bin").read_bytes() == b"x"
