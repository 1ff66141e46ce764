"""Tests of guardrefresh.storage: round trips, crash safety, errors, compaction, WarmTable."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash
from factories import make_anchors, make_rule, rule_ids, rules
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrefresh.model import ANCHOR_DIM, PolicyType, Rule, RuleAnchors
from guardrefresh.storage import (
    CorruptStoreError,
    Manifest,
    StorageError,
    StoreDirectoryMissingError,
    StoreNotFoundError,
    StorePermissionError,
    StoreWriteError,
    TableStat,
    UnsafeStoreError,
    UnsupportedVersionError,
    WarmStore,
    WarmTable,
    atomic_write,
    family_of,
)
from guardrefresh.storage import _store as store_module
from guardrefresh.storage._encode import SegmentColumns, segment_bytes
from guardrefresh.storage._fs import translate_os_error
from guardrefresh.storage._manifest import JOURNAL_HEADER_SIZE, MANIFEST_MAGIC
from guardrefresh.storage._segment import decode_segment

BLOCK = 4 * 16 * 32 * 4  # anchor bytes per rule


@pytest.fixture
def stores(store_path: Path) -> Iterator[Callable[[], WarmStore]]:
    """New WarmStore objects on ``store_path`` (as separate processes would have); closed at the end."""
    made: list[WarmStore] = []

    def new() -> WarmStore:
        made.append(WarmStore(store_path))
        return made[-1]

    yield new
    for store in made:
        store.close()


def reload(path: Path) -> WarmTable:
    """The store as a freshly started process sees it."""
    store = WarmStore(path)
    try:
        return store.load()
    finally:
        store.close()


def contents(table: WarmTable) -> dict[str, Rule]:
    return {ref.rule_id: ref.rule for ref in table.iter_refs()}


def files_state(directory: Path) -> dict[str, tuple[bytes, int, int, int]]:
    """Every file's bytes, mode, inode and mtime: what 'changes nothing on disk' compares."""
    out = {}
    for entry in sorted(directory.iterdir()):
        st_ = entry.stat()
        out[entry.name] = (entry.read_bytes(), st_.st_mode, st_.st_ino, st_.st_mtime_ns)
    return out


def store_files(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


# -- round trips ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            rules(rule_id=st.sampled_from([f"id-{i}" for i in range(8)]) | rule_ids), max_size=4
        ),
        min_size=1,
        max_size=3,
    ),
    data=st.data(),
)
def test_any_rules_round_trip_through_journal_and_snapshot(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[Rule]], data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("rt") / "warm_storage.bin"
    store = WarmStore(path)
    try:
        table = store.open()
        expected: dict[str, Rule] = {}
        for batch in batches:
            deletes = (
                data.draw(st.lists(st.sampled_from(sorted(expected)), max_size=2))
                if expected
                else []
            )
            table = store.append(table, batch, deletes)
            for rule_id in deletes:
                expected.pop(rule_id, None)
            expected.update((r.rule_id, r) for r in batch)
        assert contents(table) == expected

        journal = reload(path)  # a new process, reading snapshot + journal
        assert contents(journal) == expected
        assert journal.bridge_version == len(batches)
        assert sorted(journal.ids()) == sorted(expected)
        for rule_id, rule in expected.items():
            assert journal.rule(rule_id) == rule

        store.compact()
        compacted = reload(path)  # a new process, reading only the compacted snapshot
        assert contents(compacted) == expected
        assert compacted.bridge_version == len(batches)
        assert len(compacted.segments) == 1
        # Compaction copies the fixed records: digests survive it.
        assert {r.rule_id: r.digest for r in compacted.iter_refs()} == {
            r.rule_id: r.digest for r in journal.iter_refs()
        }
    finally:
        store.close()


POLICY_IDS = [p.value for p in PolicyType]


def _regression_rule(policy: PolicyType) -> Rule:
    return make_rule(
        f"rule-{policy.value}",
        policy_type=policy,
        drift_threshold=0.8125,
        modification_spec='{"mask": ["card_number"], "mode": "partial"}',
        slice_weights=(0.4, 0.3, 0.2, 0.1),
    )


def _assert_regression_fields(got: Rule | None, want: Rule) -> None:
    assert got is not None
    # The four fields the old data plane dropped on reload, one by one.
    assert got.policy_type is want.policy_type
    assert got.drift_threshold == want.drift_threshold == float(np.float32(0.8125))
    assert got.modification_spec == want.modification_spec
    assert (
        got.slice_weights
        == want.slice_weights
        == tuple(float(np.float32(w)) for w in (0.4, 0.3, 0.2, 0.1))
    )
    assert got == want


@pytest.mark.parametrize("via", ["journal", "compacted-snapshot", "imported-snapshot"])
@pytest.mark.parametrize("policy", list(PolicyType), ids=POLICY_IDS)
def test_reload_keeps_policy_drift_spec_and_weights(
    store_path: Path, stores: Callable[[], WarmStore], policy: PolicyType, via: str
) -> None:
    # Regression: the old Rust data plane lost policy_type, drift_threshold,
    # modification_spec and slice_weights on reload, turning forbidden rules into allow rules.
    rule = _regression_rule(policy)
    # Neighbours with the other policies and default fields, so no column can borrow a value.
    others = [
        make_rule(
            f"plain-{p.value}",
            policy_type=p,
            drift_threshold=0.0,
            modification_spec="",
            slice_weights=(),
        )
        for p in PolicyType
    ]
    store = stores()
    if via == "imported-snapshot":
        store.write_snapshot_from([*others, rule])
    else:
        store.append(store.open(), [*others, rule])
        if via == "compacted-snapshot":
            store.compact()
    table = reload(store_path)
    assert len(table.segments) == (2 if via == "journal" else 1)
    _assert_regression_fields(table.rule(rule.rule_id), rule)
    for other in others:
        got = table.rule(other.rule_id)
        assert got == other
        assert got is not None and got.slice_weights == () and got.modification_spec == ""


@pytest.mark.parametrize("via", ["journal", "compacted-snapshot", "imported-snapshot"])
def test_padded_anchors_round_trip_with_their_padding(
    store_path: Path, stores: Callable[[], WarmStore], via: str
) -> None:
    # The management plane sends 16 vectors per slot, zero-padded; any padding must
    # come back exactly, and only `counts` stay the scored anchors.
    nonzero = make_rule("nonzero", anchors=make_anchors((1, 0, 16, 3), sent=(16, 16, 16, 16)))
    zeros = make_rule(
        "zeros",
        anchors=RuleAnchors.from_slots(
            [[[0.5] * ANCHOR_DIM] + [[0.0] * ANCHOR_DIM] * 15, [], [], [[0.0] * ANCHOR_DIM]],
            (1, 0, 0, 0),
        ),
    )
    plain = make_rule("plain", seed=3)
    store = stores()
    if via == "imported-snapshot":
        store.write_snapshot_from([nonzero, zeros, plain])
    else:
        store.append(store.open(), [nonzero, zeros, plain])
        if via == "compacted-snapshot":
            store.compact()
    table = reload(store_path)
    for want in (nonzero, zeros, plain):
        got = table.rule(want.rule_id)
        assert got == want
        assert got is not None
        assert (got.anchors.counts, got.anchors.sent) == (want.anchors.counts, want.anchors.sent)
        assert got.anchors.vectors.tobytes() == want.anchors.vectors.tobytes()
    got_zeros = table.rule("zeros")
    assert got_zeros is not None and got_zeros.anchors.sent == (16, 0, 0, 1)
    # Padding changes the rule: a refresh must see it as changed.
    padded_plain = make_rule("plain", anchors=make_anchors((1, 2, 0, 3), sent=(1, 2, 0, 4)))
    ref = table.ref("plain")
    assert ref is not None
    assert ref.digest != _digest(padded_plain)


V1_STORE = Path(__file__).parent / "data" / "warm_v1"


def _digest(rule: Rule) -> int:
    """The digest this build writes for ``rule``."""
    return int(SegmentColumns.from_rules([rule], bridge_version=1).fixed["digest"][0])


def _v1_rules() -> dict[str, Rule]:
    """What tests/data/warm_v1 holds: a store written by format 1 (before padding was kept).

    It was written by guardrefresh at format version 1 with the factory rules below:
    append the first two, compact, append v1-deny while deleting v1-allow, then append
    v1-allow again (a snapshot and a journal of two segments).
    """
    return {
        "v1-forbidden": make_rule("v1-forbidden", seed=1, policy_type=PolicyType.FORBIDDEN),
        "v1-deny": make_rule(
            "v1-deny", seed=3, policy_type=PolicyType.CONTEXT_DENY, slice_weights=()
        ),
        "v1-allow": make_rule("v1-allow", seed=4, policy_type=PolicyType.CONTEXT_ALLOW, layer=""),
    }


def _copy_v1_store(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    for source in V1_STORE.iterdir():
        target = directory / source.name
        shutil.copyfile(source, target)
        target.chmod(0o600)
    return directory / "warm_storage.bin"


def test_a_format_1_store_is_read_as_it_is(tmp_path: Path) -> None:
    path = _copy_v1_store(tmp_path / "store")
    before = files_state(path.parent)
    store = WarmStore(path)
    try:
        assert store.read_manifest().format_version == 1
        table = store.load()
    finally:
        store.close()
    assert contents(table) == _v1_rules()
    for rule_id, rule in _v1_rules().items():
        got = table.rule(rule_id)
        assert got is not None and got.anchors.sent == got.anchors.counts == rule.anchors.counts
        # Unchanged rules keep their digest: the first refresh after an upgrade swaps nothing.
        ref = table.ref(rule_id)
        assert ref is not None and ref.digest == _digest(rule)
    assert files_state(path.parent) == before  # reading never rewrites


def test_a_format_1_store_takes_writes_and_becomes_format_2(tmp_path: Path) -> None:
    path = _copy_v1_store(tmp_path / "store")
    padded = make_rule("padded", anchors=make_anchors((2, 0, 0, 1), sent=(16, 0, 0, 16)))
    store = WarmStore(path)
    try:
        store.append(store.open(), [padded])
        # The next writer writes format 2: an older build now refuses the store clearly.
        assert store.read_manifest().format_version == 2
        assert contents(reload(path)) == {**_v1_rules(), "padded": padded}
        store.compact()
        assert store.read_manifest().format_version == 2
    finally:
        store.close()
    table = reload(path)
    assert contents(table) == {**_v1_rules(), "padded": padded}
    assert len(table.segments) == 1


def test_forbidden_rules_stay_forbidden_across_many_reloads(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    rule = _regression_rule(PolicyType.FORBIDDEN)
    store = stores()
    store.append(store.open(), [rule])
    for step in range(3):
        store.append(
            reload(store_path), [make_rule(f"filler-{step}", policy_type=PolicyType.CONTEXT_ALLOW)]
        )
        store.compact()
        _assert_regression_fields(reload(store_path).rule(rule.rule_id), rule)


def test_anchors_stay_mapped_not_copied(store_path: Path, stores: Callable[[], WarmStore]) -> None:
    store = stores()
    store.append(store.open(), [make_rule("a", seed=1), make_rule("b", seed=2)])
    table = reload(store_path)
    ref = table.ref("b")
    assert ref is not None
    assert np.shares_memory(ref.rule.anchors.vectors, ref.segment.anchors)
    assert not ref.rule.anchors.vectors.flags.writeable
    assert ref.rule.anchors == make_rule("b", seed=2).anchors


def test_write_snapshot_from_keeps_the_last_of_duplicate_ids(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    # Regression: duplicates used to commit a snapshot that could never be loaded again.
    store = stores()
    table = store.write_snapshot_from(
        [make_rule("x", priority=1), make_rule("y"), make_rule("x", priority=2)]
    )
    assert len(table) == 2
    again = reload(store_path)
    assert sorted(again.ids()) == ["x", "y"]
    rule = again.rule("x")
    assert rule is not None and rule.priority == 2


def test_write_snapshot_from_replaces_everything(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store = stores()
    table = store.append(store.open(), [make_rule("old")])
    table = store.write_snapshot_from([make_rule("new", family_id="f9", layer="L9")])
    assert sorted(reload(store_path).ids()) == ["new"]
    assert table.bridge_version == 2 and table.generation == 2
    assert store_files(store_path) == {
        "warm_storage.bin",
        "warm_storage.bin.lock",
        "warm_storage.bin.00000002.snap",
        "warm_storage.bin.00000002.journal",
    }
    assert [(s.family_id, s.layer_id, s.version) for s in table.table_stats()] == [("f9", "L9", 2)]


# -- crash safety ---------------------------------------------------------------------------


def test_store_files_are_0600_and_a_created_directory_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "warm_storage.bin"
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        store = WarmStore(path)
        with pytest.raises(StoreDirectoryMissingError):
            store.open()
        table = store.open(make_dirs=True)
        table = store.append(table, [make_rule("r1")])
        table = store.append(table, [make_rule("r2")], ["r1"])
        store.compact()
        store.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    assert set(modes) == {
        "warm_storage.bin",
        "warm_storage.bin.lock",
        "warm_storage.bin.00000002.snap",
        "warm_storage.bin.00000002.journal",
    }
    assert set(modes.values()) == {0o600}


def test_atomic_write_replaces_a_file_with_a_0600_one(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    target.chmod(0o644)
    assert atomic_write(target, [b"ab", memoryview(b"cd"), np.arange(2, dtype="<u2").data]) == 8
    assert target.read_bytes() == b"abcd\x00\x00\x01\x00"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_failure_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def parts() -> Iterator[bytes]:
        yield b"new and half"
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write(target, parts())
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]  # no temp file left behind


def _committed_state(
    store_path: Path, stores: Callable[[], WarmStore]
) -> tuple[WarmStore, WarmTable]:
    store = stores()
    table = store.open()
    table = store.append(table, [make_rule("a", seed=1), make_rule("b", seed=2)])
    table = store.append(table, [make_rule("c", seed=3)], ["a"])
    return store, table


def _uncommitted_segment(store_path: Path, elsewhere: Path) -> bytes:
    """The exact bytes a crashed append leaves: a whole segment the manifest does not know."""
    copy = elsewhere / "copy"
    shutil.copytree(store_path.parent, copy)
    other = WarmStore(copy / store_path.name)
    try:
        before = other.read_manifest().journal_size
        other.append(other.load(), [make_rule("ghost", seed=9)], ["b"])
        journal = other.journal_path(other.read_manifest().generation).read_bytes()
    finally:
        other.close()
    return journal[before:]


@pytest.mark.parametrize("tail", ["garbage", "partial-segment", "whole-segment", "zeros"])
def test_unacknowledged_journal_tail_is_ignored_then_cut(
    store_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    stores: Callable[[], WarmStore],
    tail: str,
) -> None:
    writer, table = _committed_state(store_path, stores)
    writer.close()
    expected = contents(table)
    segment = _uncommitted_segment(store_path, tmp_path_factory.mktemp("elsewhere"))
    extra = {
        "garbage": np.random.default_rng(1).bytes(5000),
        "partial-segment": segment[: len(segment) // 2],
        "whole-segment": segment,
        "zeros": bytes(3 * BLOCK),
    }[tail]
    journal = writer.journal_path(table.generation)
    committed = journal.stat().st_size
    with journal.open("ab") as f:
        f.write(extra)

    assert contents(reload(store_path)) == expected  # what a restarted reader sees
    assert "ghost" not in reload(store_path)

    after = stores()  # a restarted writer: the next append cuts the tail and succeeds
    table = after.append(after.load(), [make_rule("d", seed=4)])
    m = after.read_manifest()
    assert journal.stat().st_size == m.journal_size > committed
    expected["d"] = make_rule("d", seed=4)
    assert contents(table) == contents(reload(store_path)) == expected


def test_tail_left_by_a_failed_manifest_switch_is_ignored(
    store_path: Path, stores: Callable[[], WarmStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, table = _committed_state(store_path, stores)
    before = contents(table)
    real = atomic_write

    def crash_on_manifest(path: Path, parts: Any) -> int:
        if path == store_path:
            raise StoreWriteError("simulated crash before the manifest rename")
        return real(path, parts)

    monkeypatch.setattr(store_module, "atomic_write", crash_on_manifest)
    with pytest.raises(StoreWriteError, match="simulated"):
        store.append(table, [make_rule("lost")])
    monkeypatch.undo()
    journal = store.journal_path(table.generation)
    assert journal.stat().st_size > store.read_manifest().journal_size  # the tail is there
    assert contents(reload(store_path)) == before
    # The same writer object carries on from the committed state.
    table = store.append(table, [make_rule("kept")])
    assert sorted(reload(store_path).ids()) == ["b", "c", "kept"]
    assert journal.stat().st_size == store.read_manifest().journal_size


def test_leftover_manifest_temp_files_do_not_matter(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store, table = _committed_state(store_path, stores)
    expected = contents(table)
    foreign = store_path.with_name(f".{store_path.name}.tmp-999999")
    mine = store_path.with_name(f".{store_path.name}.tmp-{os.getpid()}")
    foreign.write_bytes(MANIFEST_MAGIC + b"\xff" * 80)
    mine.write_bytes(b"half a manifest")
    assert contents(reload(store_path)) == expected
    table = store.append(table, [make_rule("e")])
    assert not mine.exists()  # reused and renamed by the next atomic write
    store.compact()
    expected["e"] = make_rule("e")
    assert contents(reload(store_path)) == expected
    assert foreign.read_bytes() == MANIFEST_MAGIC + b"\xff" * 80  # never touched


# -- errors ---------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "warm_storage.bin"
    for action in (
        WarmStore(path).open,
        WarmStore(path).load,
        lambda: WarmStore(path).open(create=False),
    ):
        with pytest.raises(StoreDirectoryMissingError) as info:
            action()
        assert info.value.directory == path.parent
        assert str(path.parent) in str(info.value)
    assert not path.parent.exists()


def test_directory_removed_under_a_running_store(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store = stores()
    store.append(store.open(), [make_rule()])
    store.close()
    shutil.rmtree(store_path.parent)
    with pytest.raises(StoreDirectoryMissingError):
        store.load()


def test_missing_manifest_without_create(store_path: Path) -> None:
    with pytest.raises(StorageError, match=r"warm_storage\.bin"):
        WarmStore(store_path).open(create=False)
    assert list(store_path.parent.iterdir()) == []


@pytest.mark.parametrize("which", ["manifest", "snapshot", "journal"])
def test_file_owned_by_another_user_is_refused(
    store_path: Path, stores: Callable[[], WarmStore], monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    store, table = _committed_state(store_path, stores)
    target = {
        "manifest": store_path,
        "snapshot": store.snapshot_path(table.generation),
        "journal": store.journal_path(table.generation),
    }[which]
    if os.geteuid() == 0:
        os.chown(target, 65534, 65534)
        other = 65534
    else:
        # Only root can give a file away: pretend this process runs as someone else instead.
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)
        other = real
    with pytest.raises(UnsafeStoreError) as info:
        reload(store_path)
    assert f"owned by uid {other}" in str(info.value)
    assert str(target) in str(info.value)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666], ids=["0620", "0602", "0666"])
@pytest.mark.parametrize("which", ["manifest", "snapshot", "journal"])
def test_group_or_world_writable_file_is_refused(
    store_path: Path, stores: Callable[[], WarmStore], which: str, mode: int
) -> None:
    store, table = _committed_state(store_path, stores)
    target = {
        "manifest": store_path,
        "snapshot": store.snapshot_path(table.generation),
        "journal": store.journal_path(table.generation),
    }[which]
    target.chmod(mode)
    with pytest.raises(UnsafeStoreError) as info:
        reload(store_path)
    assert f"run: chmod 600 {target}" in str(info.value)
    assert f"mode {mode:04o}" in str(info.value)
    target.chmod(0o600)
    assert contents(reload(store_path)) == contents(table)


def test_group_readable_files_are_fine(store_path: Path, stores: Callable[[], WarmStore]) -> None:
    store, table = _committed_state(store_path, stores)
    for p in (
        store_path,
        store.snapshot_path(table.generation),
        store.journal_path(table.generation),
    ):
        p.chmod(0o644)
    assert contents(reload(store_path)) == contents(table)


_PERMISSION_PROBE = """
import json, os, sys
from pathlib import Path
from guardrefresh.storage import WarmStore
if sys.argv[1] == "drop":
    # Imported as root (the interpreter may live under /root); now lose root for good.
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
out = {}
for name in sys.argv[2:]:
    try:
        WarmStore(Path(name)).open(create=False)
        out[name] = "loaded"
    except Exception as exc:
        out[name] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


def test_permission_denied_is_a_store_permission_error(stores: Callable[[], WarmStore]) -> None:
    # Root ignores permission bits, so as root the probe drops to uid 65534 ("nobody") in a
    # child process; as another user, the files are simply made unreadable.
    as_root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="guardrefresh-perm-") as top:
        base = Path(top)
        base.chmod(0o755)
        readable_dir = base / "open-dir"
        closed_dir = base / "closed-dir"
        readable_dir.mkdir(mode=0o755)
        closed_dir.mkdir(mode=0o755)
        for d in (readable_dir, closed_dir):
            s = WarmStore(d / "warm_storage.bin")
            s.append(s.open(), [make_rule()])
            s.close()
        closed_dir.chmod(0o300 if not as_root else 0o700)  # no read/search for the probe
        if not as_root:
            (readable_dir / "warm_storage.bin").chmod(0o000)
        try:
            probe = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _PERMISSION_PROBE,
                    "drop" if as_root else "stay",
                    str(readable_dir / "warm_storage.bin"),
                    str(closed_dir / "warm_storage.bin"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
                cwd="/",
            )
        finally:
            closed_dir.chmod(0o700)
            (readable_dir / "warm_storage.bin").chmod(0o600)
    results = json.loads(probe.stdout)
    file_error = results[str(readable_dir / "warm_storage.bin")]
    dir_error = results[str(closed_dir / "warm_storage.bin")]
    assert file_error.startswith("StorePermissionError: permission denied: cannot open ")
    assert str(readable_dir / "warm_storage.bin") in file_error
    assert dir_error.startswith("StorePermissionError: permission denied: cannot read directory ")


@pytest.mark.parametrize(
    ("code", "action", "kind", "text"),
    [
        (errno.EACCES, "open", StorePermissionError, "permission denied: cannot open"),
        (errno.EPERM, "append to", StorePermissionError, "permission denied: cannot append to"),
        (errno.EROFS, "write", StorePermissionError, "read-only file system"),
        (errno.ENOENT, "create", StoreDirectoryMissingError, "does not exist"),
        (errno.ENOSPC, "append to", StoreWriteError, "no space left on device"),
        (errno.EDQUOT, "write", StoreWriteError, "no space left on device"),
        (errno.EFBIG, "append to", StoreWriteError, "file too large"),
        (errno.EIO, "write", StoreWriteError, "cannot write"),
    ],
)
def test_os_errors_map_to_storage_errors(
    tmp_path: Path, code: int, action: str, kind: type[StorageError], text: str
) -> None:
    # Synthetic errors: as root a real EACCES cannot be provoked in-process (see the probe above).
    exc = translate_os_error(
        OSError(code, os.strerror(code)), tmp_path / "warm_storage.bin", action
    )
    assert type(exc) is kind
    assert text in str(exc)


def test_missing_file_in_an_existing_directory_is_not_a_missing_directory(tmp_path: Path) -> None:
    exc = translate_os_error(
        FileNotFoundError(errno.ENOENT, "No such file"), tmp_path / "x", "open"
    )
    assert not isinstance(exc, StoreDirectoryMissingError)
    assert str(tmp_path / "x") in str(exc)


def _with_version(raw: bytes, version: int, size: int | None = None) -> bytes:
    """The manifest as another format version would write it (valid checksum; maybe another size)."""
    body = bytearray(raw[:-8])
    struct.pack_into("<H", body, 8, version)
    if size is not None:
        body = body[: size - 8].ljust(size - 8, b"\x00")
    return bytes(body) + struct.pack("<Q", xxhash.xxh3_64_intdigest(bytes(body)))


@pytest.mark.parametrize(
    ("version", "size"), [(3, None), (0, None), (65535, None), (3, 128), (3, 64)]
)
def test_unsupported_version(
    store_path: Path, stores: Callable[[], WarmStore], version: int, size: int | None
) -> None:
    store, _table = _committed_state(store_path, stores)
    store.close()
    store_path.write_bytes(_with_version(store_path.read_bytes(), version, size))
    before = files_state(store_path.parent)
    for action in (
        WarmStore(store_path).load,
        WarmStore(store_path).open,
        WarmStore(store_path).read_manifest,
    ):
        with pytest.raises(UnsupportedVersionError) as info:
            action()
        assert info.value.found == version
        assert f"has format version {version}; this build reads version 1 or 2" in str(info.value)
    assert files_state(store_path.parent) == before


def test_a_failed_load_changes_nothing_on_disk(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store, table = _committed_state(store_path, stores)
    store.close()
    journal = store.journal_path(table.generation)
    raw = bytearray(journal.read_bytes())
    raw[-100] ^= 0x10
    journal.write_bytes(bytes(raw))
    (store_path.parent / "warm_storage.bin.lock").unlink()  # open() must not even create the lock
    before = files_state(store_path.parent)
    for action in (
        WarmStore(store_path).load,
        WarmStore(store_path).open,
        WarmStore(store_path).info,
    ):
        with pytest.raises(CorruptStoreError) as info:
            action()
        assert info.value.section.startswith("journal")
    assert files_state(store_path.parent) == before


@pytest.mark.parametrize("which", ["snapshot", "journal"])
def test_writes_to_a_corrupt_store_change_nothing(
    store_path: Path, stores: Callable[[], WarmStore], which: str
) -> None:
    store, table = _committed_state(store_path, stores)
    store.close()
    target = store.snapshot_path(1) if which == "snapshot" else store.journal_path(1)
    raw = bytearray(target.read_bytes())
    raw[len(raw) - 200] ^= 1
    target.write_bytes(bytes(raw))
    before = files_state(store_path.parent)
    writer = stores()
    with pytest.raises(CorruptStoreError) as info:
        writer.compact()
    assert info.value.path == target
    if which == "journal":
        # An append verifies the committed journal it extends (not the snapshot: that
        # would read every anchor on every install).
        with pytest.raises(CorruptStoreError):
            writer.append(table, [make_rule("z")])
    assert files_state(store_path.parent) == before


def test_opening_an_existing_store_writes_nothing(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store, _table = _committed_state(store_path, stores)
    store.close()
    before = files_state(store_path.parent)
    for action in (stores().open, stores().load, stores().info, stores().read_manifest):
        action()
    assert files_state(store_path.parent) == before


class _RacedReader(WarmStore):
    """A reader that another process's compaction overtakes right after it read the manifest."""

    raced = False

    def read_manifest(self) -> Manifest:
        manifest = super().read_manifest()
        if not self.raced:
            self.raced = True
            other = WarmStore(self.path)
            try:
                other.compact()
            finally:
                other.close()
        return manifest


def test_a_load_overtaken_by_a_compaction_retries(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    _store, table = _committed_state(store_path, stores)
    reader = _RacedReader(store_path)
    loaded = reader.load()  # the files its first manifest named are gone by the time it maps them
    assert reader.raced
    assert loaded.generation == 2
    assert contents(loaded) == contents(table)


# -- incremental installs -------------------------------------------------------------------


def test_appending_ten_rules_does_not_rewrite_the_snapshot(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    n = 300
    store = stores()
    table = store.write_snapshot_from([make_rule(f"base-{i}", seed=i) for i in range(n)])
    snap = store.snapshot_path(table.generation)
    journal = store.journal_path(table.generation)
    snap_before = snap.stat()
    journal_before = journal.stat().st_size
    assert snap_before.st_size > n * BLOCK

    table = store.append(table, [make_rule(f"new-{i}", seed=1000 + i) for i in range(10)])

    snap_after = snap.stat()
    assert (snap_after.st_ino, snap_after.st_mtime_ns, snap_after.st_size) == (
        snap_before.st_ino,
        snap_before.st_mtime_ns,
        snap_before.st_size,
    )
    grown = journal.stat().st_size - journal_before
    assert 10 * BLOCK < grown < 10 * BLOCK + 4096  # one segment: anchors plus small columns
    assert store.read_manifest().journal_size == journal.stat().st_size
    again = reload(store_path)
    assert len(again) == n + 10
    assert len(again.segments) == 2
    assert again.rule("new-9") == make_rule("new-9", seed=1009)
    assert again.rule("base-0") == make_rule("base-0", seed=0)


def test_empty_append_still_commits_a_version(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store = stores()
    table = store.append(store.open(), [make_rule()])
    table = store.append(table, [])
    assert table.bridge_version == 2 == reload(store_path).bridge_version
    assert len(reload(store_path)) == 1


# -- compaction -----------------------------------------------------------------------------


def _varied_store(store: WarmStore) -> WarmTable:
    table = store.open()
    table = store.append(
        table,
        [
            make_rule("g1", family_id="f1", layer="L1", seed=1),
            make_rule("g2", family_id="f1", layer="L1", seed=2),
            make_rule("s1", family_id="f1", layer="L1", agent_id="agent-a", seed=3),
            make_rule("s2", family_id="f1", layer="L2", agent_id="agent-b", seed=4),
        ],
    )  # version 1
    table = store.append(
        table, [make_rule("g3", family_id="f2", layer="L1", installed_by="agent-a", seed=5)]
    )
    table = store.append(
        table,
        [
            make_rule("g2", family_id="f1", layer="L1", priority=99, seed=6),  # replaces g2
            make_rule("x1", family_id="f3", layer="L1", seed=7),
        ],
    )  # version 3
    table = store.append(table, [], ["x1"])  # version 4: f3 now empty
    return table


def test_compact_keeps_everything_and_removes_the_old_generation(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store = stores()
    table = _varied_store(store)
    before = contents(table)
    stats = table.table_stats()
    versions = dict(table.table_versions)
    assert table.generation == 1 and len(table.segments) == 5

    compacted = store.compact()

    assert compacted.generation == 2
    assert compacted.bridge_version == table.bridge_version == 4
    assert contents(compacted) == before
    assert compacted.table_stats() == stats
    assert compacted.table_versions == versions
    assert len(compacted.segments) == 1
    assert store_files(store_path) == {
        "warm_storage.bin",
        "warm_storage.bin.lock",
        "warm_storage.bin.00000002.snap",
        "warm_storage.bin.00000002.journal",
    }
    assert store.journal_path(2).stat().st_size == JOURNAL_HEADER_SIZE
    m = store.read_manifest()
    assert (m.generation, m.bridge_version, m.rule_count) == (2, 4, len(before))
    again = reload(store_path)
    assert contents(again) == before and again.table_stats() == stats
    # And it keeps working: append on top of the compacted generation, compact again.
    table = store.append(compacted, [make_rule("after")])
    assert table.bridge_version == 5
    assert store.compact().generation == 3
    assert contents(reload(store_path)) == {**before, "after": make_rule("after")}


def test_crash_before_the_manifest_switch_leaves_the_old_state(
    store_path: Path, stores: Callable[[], WarmStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores()
    table = _varied_store(store)
    before = contents(table)
    manifest_before = store_path.read_bytes()
    real = atomic_write
    written: list[Path] = []

    def crash_on_manifest(path: Path, parts: Any) -> int:
        if path == store_path:
            raise StoreWriteError("simulated crash before the manifest switch")
        written.append(path)
        return real(path, parts)

    monkeypatch.setattr(store_module, "atomic_write", crash_on_manifest)
    with pytest.raises(StoreWriteError, match="simulated"):
        store.compact()
    monkeypatch.undo()

    assert written == [store.snapshot_path(2), store.journal_path(2)]  # the new files were written
    assert store_path.read_bytes() == manifest_before
    old = reload(store_path)
    assert (old.generation, old.bridge_version) == (1, 4)
    assert contents(old) == before
    # Appends continue on the old generation; a later compaction reuses the number and cleans up.
    table = store.append(old, [make_rule("later")])
    assert table.generation == 1
    assert store.compact().generation == 2
    assert contents(reload(store_path)) == {**before, "later": make_rule("later")}
    assert store_files(store_path) == {
        "warm_storage.bin",
        "warm_storage.bin.lock",
        "warm_storage.bin.00000002.snap",
        "warm_storage.bin.00000002.journal",
    }


def test_crash_after_the_manifest_switch_leaves_old_files_that_do_not_matter(
    store_path: Path, tmp_path_factory: pytest.TempPathFactory, stores: Callable[[], WarmStore]
) -> None:
    store = stores()
    table = _varied_store(store)
    saved = tmp_path_factory.mktemp("saved")
    for p in (store.snapshot_path(1), store.journal_path(1)):
        shutil.copy2(p, saved / p.name)
    store.compact()
    for p in saved.iterdir():  # as if the crash came before the old files were removed
        shutil.copy2(p, store_path.parent / p.name)
    assert contents(reload(store_path)) == contents(table)
    assert reload(store_path).generation == 2
    store.compact()
    assert store_files(store_path) == {
        "warm_storage.bin",
        "warm_storage.bin.lock",
        "warm_storage.bin.00000003.snap",
        "warm_storage.bin.00000003.journal",
    }


def test_needs_compaction_after_a_large_journal(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store = stores()
    table = store.append(store.open(), [make_rule(f"r{i}", seed=i) for i in range(10)])
    assert not store.needs_compaction()
    # 4 MiB of journal (about 512 rules of 8 KiB of anchors) and more than a quarter of the snapshot.
    table = store.append(table, [make_rule(f"big{i}", seed=i) for i in range(520)])
    assert store.needs_compaction()
    store.compact()
    table = store.append(store.load(), [make_rule("one")])
    assert not store.needs_compaction()
    assert len(table) == 531


def test_info(store_path: Path, stores: Callable[[], WarmStore]) -> None:
    store = stores()
    _varied_store(store)
    info = store.info()
    assert info.journal_segments == 4
    assert info.manifest.generation == 1 and info.manifest.rule_count == 5
    assert info.snapshot_path == store.snapshot_path(1) and info.journal_path == store.journal_path(
        1
    )


# -- WarmTable ------------------------------------------------------------------------------


def test_table_stats(store_path: Path, stores: Callable[[], WarmStore]) -> None:
    table = _varied_store(stores())
    expected = [
        TableStat("f1", "L1", version=3, rule_count=3, global_count=2, scoped_count=1),
        TableStat("f1", "L2", version=1, rule_count=1, global_count=0, scoped_count=1),
        TableStat("f2", "L1", version=2, rule_count=1, global_count=1, scoped_count=0),
    ]
    assert table.table_stats() == expected
    assert reload(store_path).table_stats() == expected
    # The emptied table keeps its version (the deletion), though it has no row in the stats.
    assert table.table_versions[("f3", "L1")] == 4


def test_moving_a_rule_bumps_both_tables(store_path: Path, stores: Callable[[], WarmStore]) -> None:
    store = stores()
    table = _varied_store(store)
    table = store.append(table, [make_rule("s2", family_id="f2", layer="L1", agent_id="agent-b")])
    stats = {(s.family_id, s.layer_id): s for s in table.table_stats()}
    assert ("f1", "L2") not in stats
    assert stats[("f2", "L1")] == TableStat("f2", "L1", 5, 2, 1, 1)
    assert table.table_versions[("f1", "L2")] == 5
    assert reload(store_path).table_stats() == table.table_stats()


def test_deletions(store_path: Path, stores: Callable[[], WarmStore]) -> None:
    store = stores()
    table = _varied_store(store)
    table = store.append(table, [], ["g1", "no-such-rule"])
    assert "g1" not in table and table.rule("g1") is None and table.ref("g1") is None
    assert len(table) == 4
    table = store.append(table, [make_rule("g1", priority=-1)])  # reinstall after delete
    for t in (table, reload(store_path), store.compact()):
        rule = t.rule("g1")
        assert rule is not None and rule.priority == -1
        assert sorted(t.ids()) == ["g1", "g2", "g3", "s1", "s2"]
        assert sorted(ref.rule_id for ref in t.iter_refs()) == sorted(t.ids())


def test_delete_and_upsert_in_one_append(store_path: Path, stores: Callable[[], WarmStore]) -> None:
    store = stores()
    table = _varied_store(store)
    table = store.append(table, [make_rule("new")], ["g3", "s1"])
    assert sorted(table.ids()) == sorted(reload(store_path).ids()) == ["g1", "g2", "new", "s2"]


def test_ids_of_agent(store_path: Path, stores: Callable[[], WarmStore]) -> None:
    store = stores()
    table = _varied_store(store)
    # Scoped to agent-a (s1) or installed by it (g3). make_rule installs as "agent-x".
    assert sorted(table.ids_of_agent("agent-a")) == ["g3", "s1"]
    assert table.ids_of_agent("agent-b") == ["s2"]
    assert sorted(table.ids_of_agent("agent-x")) == ["g1", "g2", "s1", "s2"]
    assert table.ids_of_agent("nobody") == []
    # Re-scoping s1 and deleting g3 takes them off agent-a's list.
    table = store.append(table, [make_rule("s1", agent_id="agent-c")], ["g3"])
    assert table.ids_of_agent("agent-a") == []
    assert table.ids_of_agent("agent-c") == ["s1"]
    assert reload(store_path).ids_of_agent("agent-c") == ["s1"]


def test_iter_refs_and_family_names(store_path: Path, stores: Callable[[], WarmStore]) -> None:
    table = _varied_store(stores())
    # Storage order: snapshot first, then journal segments in order; replaced rows are gone.
    assert [r.rule_id for r in table.iter_refs()] == ["g1", "s1", "s2", "g3", "g2"]
    assert [r.rule_id for r in table.iter_refs(families={"f1"})] == ["g1", "s1", "s2", "g2"]
    assert [r.rule_id for r in table.iter_refs(families=["f2", "f3"])] == ["g3"]
    assert list(table.iter_refs(families=set())) == []
    assert list(table.iter_refs(families={"nope"})) == []
    assert table.family_names() == {"f1", "f2"}  # f3's only rule was deleted
    ref = next(table.iter_refs(families={"f2"}))
    assert (ref.rule_id, ref.family_id, family_of(ref)) == ("g3", "f2", "f2")
    assert repr(ref) == "RuleRef('g3', family='f2')"
    assert ref.rule is ref.rule  # decoded once
    assert ref.digest == table.ref("g3").digest  # type: ignore[union-attr]
    compacted = reload(store_path)
    assert {r.rule_id: r.digest for r in compacted.iter_refs()} == {
        r.rule_id: r.digest for r in table.iter_refs()
    }


def test_digests_tell_changed_rules_apart(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store = stores()
    table = store.append(store.open(), [make_rule("a"), make_rule("b")])
    first = {r.rule_id: r.digest for r in table.iter_refs()}
    table = store.append(table, [make_rule("a"), make_rule("b", drift_threshold=0.5)])
    second = {r.rule_id: r.digest for r in table.iter_refs()}
    assert first["a"] == second["a"]
    assert first["b"] != second["b"]
    assert first["a"] != first["b"] or make_rule("a") == make_rule("b")


def test_with_segment_shares_and_never_changes_the_older_table(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    store = stores()
    old = _varied_store(store)
    old_rules = contents(old)
    old_stats = old.table_stats()
    new = store.append(old, [make_rule("g1", priority=-5), make_rule("fresh")], ["s2"])

    assert new.segments[: len(old.segments)] == old.segments
    assert all(a is b for a, b in zip(old.segments, new.segments, strict=False))
    # The older table is untouched: copy-on-write of the live masks.
    assert contents(old) == old_rules
    assert old.table_stats() == old_stats
    assert "fresh" not in old and "s2" in old
    assert new.rule("g1") == make_rule("g1", priority=-5)
    assert old.rule("g1") == make_rule("g1", family_id="f1", layer="L1", seed=1)

    # Applying a segment directly, twice, to the same base: each result independent.
    seg_bytes = segment_bytes(
        SegmentColumns.from_rules(
            [make_rule("g1", priority=1)], bridge_version=9, deleted_ids=["g2"]
        )
    )
    seg = decode_segment(memoryview(seg_bytes), 0, path=store_path, what="test")
    one, two = old.with_segment(seg), old.with_segment(seg)
    assert one.bridge_version == two.bridge_version == 9
    assert contents(one) == contents(two)
    assert "g2" not in one and "g2" in old
    assert contents(old) == old_rules
    assert one.table_versions[("fam", "L1")] == 9 and ("fam", "L1") not in old.table_versions


# -- two writers (two processes) ------------------------------------------------------------


def test_a_writer_notices_another_writers_append(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    a, b = stores(), stores()
    table_a = a.append(a.open(), [make_rule("from-a-1")])
    table_b = b.append(b.load(), [make_rule("from-b")])
    assert table_b.bridge_version == 2
    # A's table is stale; its next append reloads first and applies on top.
    table_a = a.append(table_a, [make_rule("from-a-2")])
    assert sorted(table_a.ids()) == ["from-a-1", "from-a-2", "from-b"]
    assert table_a.bridge_version == 3
    assert sorted(reload(store_path).ids()) == ["from-a-1", "from-a-2", "from-b"]
    # And B, in turn, notices A.
    table_b = b.append(table_b, [], ["from-a-1"])
    assert sorted(table_b.ids()) == sorted(reload(store_path).ids()) == ["from-a-2", "from-b"]


def test_a_writer_notices_another_writers_compaction(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    a, b = stores(), stores()
    table_a = a.append(a.open(), [make_rule("a1")])
    table_a = a.append(table_a, [make_rule("a2")])  # A now holds generation 1's journal open
    b.append(b.load(), [make_rule("b1")])
    b.compact()
    assert not b.journal_path(1).exists()
    table_a = a.append(table_a, [make_rule("a3")])
    assert table_a.generation == 2
    assert sorted(table_a.ids()) == ["a1", "a2", "a3", "b1"]
    again = reload(store_path)
    assert sorted(again.ids()) == ["a1", "a2", "a3", "b1"]
    assert again.bridge_version == 4


def test_interleaved_writers_lose_nothing(
    store_path: Path, stores: Callable[[], WarmStore]
) -> None:
    writers = [stores() for _ in range(3)]
    tables = [w.open() for w in writers]
    for step in range(12):
        i = step % 3
        tables[i] = writers[i].append(tables[i], [make_rule(f"w{i}-{step}", seed=step)])
        if step == 7:
            writers[i].compact()
    final = reload(store_path)
    assert len(final) == 12 and final.bridge_version == 12
    assert final.rule("w2-5") == make_rule("w2-5", seed=5)


# -- a lost manifest, a missing store, forged content -------------------------------


def test_a_lost_manifest_is_never_replaced_by_an_empty_store(store_path: Path) -> None:
    store = WarmStore(store_path)
    table = store.open()
    store.append(table, [make_rule("keep")])
    store.close()
    store_path.unlink()
    with pytest.raises(CorruptStoreError, match=r"manifest .*missing, but data files exist"):
        WarmStore(store_path).open()
    assert not store_path.exists()  # nothing was created over the data


def test_a_lost_manifest_under_a_running_store_is_still_refused(store_path: Path) -> None:
    store = WarmStore(store_path)
    table = store.append(store.open(), [make_rule("keep")])
    store_path.unlink()  # the data files stay
    with pytest.raises(CorruptStoreError, match="missing, but data files exist"):
        WarmStore(store_path).open()
    with pytest.raises(StoreNotFoundError):
        store.load()
    with pytest.raises(StoreNotFoundError):
        store.append(table, [make_rule("new")])
    store.close()
    assert not store_path.exists()


def _empty_the_directory(directory: Path, *, keep_lock: bool) -> None:
    shutil.rmtree(directory)
    directory.mkdir(mode=0o700)
    if keep_lock:
        (directory / "warm_storage.bin.lock").touch(mode=0o600)


@pytest.mark.parametrize("keep_lock", [True, False], ids=["empty-lock-left", "empty"])
def test_an_emptied_directory_is_started_again_as_an_empty_store(
    store_path: Path, keep_lock: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = WarmStore(store_path)
    table = store.append(store.open(), [make_rule("a"), make_rule("b")])
    before = store.read_manifest()
    _empty_the_directory(store_path.parent, keep_lock=keep_lock)

    # Seen by a load (a refresh): an empty store, counting on from what was there.
    emptied = store.load()
    assert len(emptied) == 0
    assert emptied.generation == before.generation + 1
    assert emptied.bridge_version == before.bridge_version + 1
    assert "was emptied" in caplog.text and "after holding 2 rules" in caplog.text

    # Seen by a write: it lands in a new empty store.
    table = store.append(emptied, [make_rule("c")])
    _empty_the_directory(store_path.parent, keep_lock=keep_lock)
    table = store.append(table, [make_rule("d")])
    assert list(table.ids()) == ["d"]
    store.close()
    again = WarmStore(store_path).load()
    assert sorted(again.ids()) == ["d"]
    assert again.bridge_version == before.bridge_version + 4


def _soft_limit_leaving(free: int) -> int:
    """The soft RLIMIT_NOFILE under which exactly ``free`` more descriptors can be opened.

    The limit bounds descriptor *numbers*, and a new one takes the lowest free number:
    holes left by descriptors earlier tests closed count, while a high-numbered one still
    open (a channel, a pool) does not. Counting open descriptors instead left the limit
    above the holes, and every load succeeded (a full-suite run).
    """
    number = 0
    while True:
        try:
            os.fstat(number)
        except OSError:
            if free == 0:
                return number
            free -= 1
        number += 1


def test_running_out_of_descriptors_while_loading_is_a_storage_error(store_path: Path) -> None:
    """Real EMFILE: the soft RLIMIT_NOFILE a few descriptors above what is open.

    A load opens the manifest, then each data file, and maps it (mmap duplicates the
    descriptor); each step in turn meets the limit. Every failure must be a
    StorageError saying so, never a bare OSError.
    """
    store = WarmStore(store_path)
    store.append(store.open(), [make_rule("a")])
    store.close()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    messages = []
    for extra in range(6):
        reader = WarmStore(store_path)
        resource.setrlimit(resource.RLIMIT_NOFILE, (_soft_limit_leaving(extra), hard))
        try:
            assert len(reader.load()) == 1
        except StorageError as exc:
            messages.append(str(exc))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(messages) >= 2, messages  # at the open and at the mapping
    assert all("too many open files" in m for m in messages), messages
    assert any(m.startswith("cannot map ") for m in messages), messages


def test_loading_where_there_is_no_store_says_so(store_path: Path) -> None:
    from guardrefresh.storage import StoreNotFoundError

    with pytest.raises(StoreNotFoundError, match="no warm storage at"):
        WarmStore(store_path).load()


def test_forged_fixed_fields_are_refused_at_load(tmp_path: Path) -> None:
    columns = SegmentColumns.from_rules([make_rule("r1")], bridge_version=1)
    columns.fixed["policy"][0] = 99  # checksums will be computed over the forged value
    raw = segment_bytes(columns)
    with pytest.raises(CorruptStoreError, match="values out of range"):
        decode_segment(memoryview(raw), 0, path=tmp_path / "x", what="snapshot")


def test_needs_compaction_is_known_after_a_plain_load(store_path: Path) -> None:
    store = WarmStore(store_path)
    table = store.open()
    big = [make_rule(f"r{i}", seed=i) for i in range(600)]  # ~5 MiB of anchors
    store.append(table, big)
    assert store.needs_compaction()
    store.close()
    fresh = WarmStore(store_path)
    fresh.load()
    assert fresh.needs_compaction()


def test_rebuilding_over_a_lost_manifest_never_goes_back_in_version(store_path: Path) -> None:
    store = WarmStore(store_path)
    table = store.open()
    for i in range(3):
        table = store.append(table, [make_rule(f"r{i}", seed=i)])
    store.close()
    assert table.bridge_version == 3
    store_path.write_bytes(b"garbage")  # the manifest is lost
    rebuilt = WarmStore(store_path).write_snapshot_from([make_rule("new")])
    assert rebuilt.bridge_version == 4 and rebuilt.generation == 2
    assert sorted(WarmStore(store_path).load().ids()) == ["new"]


def test_temp_files_of_dead_writers_are_removed_on_open(store_path: Path) -> None:
    WarmStore(store_path).open().bridge_version  # noqa: B018 (creates the store)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    leftovers = [
        store_path.with_name(f".{store_path.name}.tmp-{dead_pid}"),
        store_path.with_name(f".{store_path.name}.00000002.snap.tmp-{dead_pid}"),
    ]
    alive = store_path.with_name(f".{store_path.name}.tmp-{os.getpid()}")
    unrelated = store_path.with_name(".other.tmp-1")
    for path in [*leftovers, alive, unrelated]:
        path.write_bytes(b"partial")
    WarmStore(store_path).open()
    assert not any(p.exists() for p in leftovers)
    assert alive.exists() and unrelated.exists()
