"""Corruption detection: every truncation, flipped bit and garbage file is refused, never loaded.

Two small stores are built once per module: one with a snapshot and a journal of two
segments, one holding only a compacted snapshot. Their bytes stay in memory; each variant is
written over one real file of a working copy, loaded by a fresh WarmStore, and the file is
put back. Failures are collected and reported together.
"""

from __future__ import annotations

import random
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
import xxhash
from factories import make_rule

from guardrefresh.model import Rule
from guardrefresh.storage import (
    CorruptStoreError,
    Manifest,
    StorageError,
    UnsupportedVersionError,
    WarmStore,
    WarmTable,
)
from guardrefresh.storage._layout import SEGMENT_MAGIC
from guardrefresh.storage._manifest import JOURNAL_HEADER_SIZE, JOURNAL_MAGIC, MANIFEST_MAGIC

FLIPS_PER_FILE = 300
GARBAGE_FILES = 200
MANIFEST_VERSION_BYTES = range(8, 10)  # the only bytes whose damage reads as "another version"


@attrs.frozen
class Case:
    """A built store: its directory, the bytes of its three files, and what it loads to."""

    name: str
    path: Path  # the manifest
    files: dict[str, Path]  # role ("manifest", "snapshot", "journal") -> file
    original: dict[str, bytes]
    rules: dict[str, Rule]
    bridge_version: int

    def write(self, role: str, data: bytes) -> None:
        # In place (same inode, mode 0600 kept): only the bytes differ.
        with self.files[role].open("r+b") as f:
            f.write(data)
            f.truncate(len(data))

    def restore(self) -> None:
        for role, data in self.original.items():
            if self.files[role].read_bytes() != data:
                self.write(role, data)

    def manifest(self) -> Manifest:
        return Manifest.decode(self.original["manifest"], self.path)


def _snapshot_store(directory: Path) -> tuple[Path, WarmTable]:
    path = directory / "warm_storage.bin"
    store = WarmStore(path)
    try:
        table = store.write_snapshot_from([make_rule("a", seed=1, family_id="f1")])
        table = store.append(
            table, [make_rule("b", seed=2, agent_id="agent-1", family_id="f2")], ["a"]
        )
        table = store.append(table, [], ["no-such-rule"])  # a segment of deletions only
    finally:
        store.close()
    return path, table


def _build(name: str, directory: Path) -> Case:
    path, table = _snapshot_store(directory)
    if name == "compacted":
        store = WarmStore(path)
        try:
            table = store.compact()
        finally:
            store.close()
    store = WarmStore(path)
    m = store.read_manifest()
    files = {
        "manifest": path,
        "snapshot": store.snapshot_path(m.generation),
        "journal": store.journal_path(m.generation),
    }
    case = Case(
        name=name,
        path=path,
        files=files,
        original={role: p.read_bytes() for role, p in files.items()},
        rules={ref.rule_id: ref.rule for ref in table.iter_refs()},
        bridge_version=table.bridge_version,
    )
    assert len(table.segments) == (3 if name == "journal" else 1)
    _assert_loads(case)
    return case


@pytest.fixture(scope="module", params=["journal", "compacted"])
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Case]:
    built = _build(request.param, tmp_path_factory.mktemp(f"corrupt-{request.param}"))
    yield built


@pytest.fixture
def pristine(case: Case) -> Iterator[Case]:
    """The case's files as built, before and after the test (a test that fails midway restores them)."""
    case.restore()
    _assert_loads(case)
    yield case
    case.restore()
    _assert_loads(case)


def _assert_loads(case: Case) -> None:
    table = WarmStore(case.path).load()
    assert {ref.rule_id: ref.rule for ref in table.iter_refs()} == case.rules
    assert table.bridge_version == case.bridge_version


def _outcome(case: Case) -> BaseException | None:
    """Load the store in a fresh WarmStore; the exception, or None if it loaded."""
    try:
        WarmStore(case.path).load()
    except Exception as exc:
        return exc
    return None


def _problem(
    exc: BaseException | None, *, damaged: Path | None, version_hit: bool = False
) -> str | None:
    """Why an outcome is wrong, or None when it is the expected, well-described refusal."""
    if version_hit:
        return (
            None
            if isinstance(exc, UnsupportedVersionError)
            else f"expected UnsupportedVersionError, got {exc!r}"
        )
    if not isinstance(exc, CorruptStoreError):
        return f"expected CorruptStoreError, got {exc!r}"
    if not exc.section or f": {exc.section} at offset {exc.offset}: " not in str(exc):
        return f"message does not name a section and offset: {exc}"
    if damaged is not None and exc.path != damaged:
        return f"names {exc.path.name}, not the damaged {damaged.name}: {exc}"
    return None


def _check_all(
    case: Case, role: str, variants: Iterator[tuple[object, bytes, bool]], *, name_file: bool = True
) -> tuple[int, list[str]]:
    """Write each variant of ``role``'s file, load, and collect every wrong outcome."""
    problems: list[str] = []
    count = 0
    for label, data, version_hit in variants:
        count += 1
        case.write(role, data)
        problem = _problem(
            _outcome(case), damaged=case.files[role] if name_file else None, version_hit=version_hit
        )
        if problem:
            problems.append(f"{case.name} {role} {label}: {problem}")
    case.write(role, case.original[role])
    return count, problems


ROLES = ["manifest", "snapshot", "journal"]


# -- truncation -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_truncation_at_every_offset(pristine: Case, role: str) -> None:
    data = pristine.original[role]
    count, problems = _check_all(
        pristine, role, ((f"cut at {n}", data[:n], False) for n in range(len(data)))
    )
    assert count == len(data) > 0
    assert problems == []


def _forge_manifest(case: Case, **fields: int) -> bytes:
    return attrs.evolve(case.manifest(), **fields).encode()


@pytest.mark.parametrize("role", ["snapshot", "journal"])
def test_truncation_with_a_manifest_that_agrees(pristine: Case, role: str) -> None:
    # A manifest forged to match the shorter file (sizes and checksums): the segment decoder's
    # own bounds checks and the rule-count cross-check must still refuse every cut.
    data = pristine.original[role]
    m = pristine.manifest()
    problems: list[str] = []
    for n in range(len(data)):
        cut = data[:n]
        if role == "snapshot":
            forged = _forge_manifest(pristine, snapshot_size=n)
        else:
            forged = _forge_manifest(
                pristine, journal_size=n, journal_checksum=xxhash.xxh3_64_intdigest(cut)
            )
        pristine.write("manifest", forged)
        pristine.write(role, cut)
        problem = _problem(_outcome(pristine), damaged=None)
        if problem:
            problems.append(f"{pristine.name} {role} cut at {n}: {problem}")
    assert m == pristine.manifest()
    assert problems == []


# -- flipped bits ---------------------------------------------------------------------------


def _flips(data: bytes, positions: list[int]) -> Iterator[tuple[object, bytes, bool]]:
    for bit in positions:
        raw = bytearray(data)
        raw[bit // 8] ^= 1 << (bit % 8)
        yield f"bit {bit} (byte {bit // 8})", bytes(raw), False


def test_every_bit_of_the_manifest(pristine: Case) -> None:
    data = pristine.original["manifest"]
    variants = (
        (label, raw, int(str(label).split("byte ")[1].rstrip(")")) in MANIFEST_VERSION_BYTES)
        for label, raw, _ in _flips(data, list(range(len(data) * 8)))
    )
    count, problems = _check_all(pristine, "manifest", variants)
    assert count == 88 * 8
    assert problems == []


@pytest.mark.parametrize("role", ["snapshot", "journal"])
def test_seeded_bit_flips(pristine: Case, role: str) -> None:
    data = pristine.original[role]
    rng = random.Random(f"{pristine.name}-{role}")
    bits = len(data) * 8
    positions = sorted(rng.sample(range(bits), min(FLIPS_PER_FILE, bits)))
    # Always include the headers, where a bad decode would do most harm.
    positions = sorted(set(positions) | set(range(min(64 * 8, bits))))
    count, problems = _check_all(pristine, role, _flips(data, positions))
    assert count >= min(FLIPS_PER_FILE, bits)
    assert problems == []


# -- garbage files --------------------------------------------------------------------------


def _garbage(
    rng: random.Random, *, size: int, magic: bytes, version_at: int | None
) -> Iterator[bytes]:
    """Random files: arbitrary sizes, the expected size, and ones that start plausibly."""
    for i in range(GARBAGE_FILES):
        kind = i % 4
        length = size if kind in (1, 2, 3) else rng.randrange(0, 2 * size + 2)
        raw = bytearray(rng.randbytes(length))
        if kind >= 2:
            raw[: len(magic)] = magic[:length]
        if kind == 3 and version_at is not None and length >= version_at + 2:
            struct.pack_into("<H", raw, version_at, 1)
        yield bytes(raw)


def test_garbage_manifests(pristine: Case) -> None:
    rng = random.Random(f"manifest-{pristine.name}")
    problems: list[str] = []
    for i, raw in enumerate(_garbage(rng, size=88, magic=MANIFEST_MAGIC, version_at=8)):
        pristine.write("manifest", raw)
        exc = _outcome(pristine)
        if not isinstance(exc, CorruptStoreError | UnsupportedVersionError):
            problems.append(f"garbage manifest {i} ({len(raw)} bytes): {exc!r}")
        elif isinstance(exc, UnsupportedVersionError) and raw[:8] != MANIFEST_MAGIC:
            problems.append(f"garbage manifest {i}: a version error without the magic: {exc}")
    assert problems == []


@pytest.mark.parametrize("role", ["snapshot", "journal"])
def test_garbage_data_files(pristine: Case, role: str) -> None:
    size = len(pristine.original[role])
    magic = SEGMENT_MAGIC if role == "snapshot" else JOURNAL_MAGIC
    rng = random.Random(f"{role}-{pristine.name}")
    variants = (
        (f"garbage {i}", raw, False)
        for i, raw in enumerate(_garbage(rng, size=size, magic=magic, version_at=8))
    )
    count, problems = _check_all(pristine, role, variants)
    assert count == GARBAGE_FILES
    assert problems == []


def test_garbage_is_always_a_storage_error(pristine: Case) -> None:
    # Garbage in every file at once, including ones longer than what the manifest names.
    rng = random.Random(7)
    for _ in range(50):
        for role in ROLES:
            pristine.write(
                role, rng.randbytes(rng.randrange(0, 2 * len(pristine.original[role]) + 1))
            )
        assert isinstance(_outcome(pristine), StorageError)


# -- manifests that lie, with a valid checksum ----------------------------------------------


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("generation", lambda v: v + 1),  # names files that do not exist
        ("generation", lambda v: v - 1),
        ("bridge_version", lambda v: v + 1),
        ("rule_count", lambda v: v + 1),
        ("rule_count", lambda v: 0),
        ("snapshot_size", lambda v: v - 64),
        ("snapshot_size", lambda v: v + 64),
        ("snapshot_header_checksum", lambda v: v ^ 1),
        ("journal_size", lambda v: v + 1),
        ("journal_size", lambda v: v - 1),
        ("journal_checksum", lambda v: v ^ 1),
    ],
)
def test_manifest_that_disagrees_with_the_files(
    pristine: Case, field: str, change: Callable[[int], int]
) -> None:
    m = pristine.manifest()
    pristine.write("manifest", attrs.evolve(m, **{field: change(getattr(m, field))}).encode())
    problem = _problem(_outcome(pristine), damaged=None)
    assert problem is None


def test_manifest_timestamp_is_informational(pristine: Case) -> None:
    m = pristine.manifest()
    pristine.write("manifest", attrs.evolve(m, updated_at_ms=m.updated_at_ms + 12345).encode())
    _assert_loads(pristine)


def test_journal_of_another_generation_is_refused(pristine: Case) -> None:
    # A journal header naming another generation, with the manifest's checksum updated to match.
    journal = bytearray(pristine.original["journal"])
    struct.pack_into("<Q", journal, 16, pristine.manifest().generation + 1)
    pristine.write("journal", bytes(journal))
    pristine.write(
        "manifest",
        _forge_manifest(pristine, journal_checksum=xxhash.xxh3_64_intdigest(bytes(journal))),
    )
    exc = _outcome(pristine)
    assert isinstance(exc, CorruptStoreError)
    assert exc.section == "journal header" and "generation" in str(exc)


def test_missing_data_file_is_corruption(pristine: Case, tmp_path: Path) -> None:
    for role in ("snapshot", "journal"):
        moved = tmp_path / role
        shutil.move(pristine.files[role], moved)
        try:
            exc = _outcome(pristine)
            assert isinstance(exc, CorruptStoreError)
            assert exc.path == pristine.files[role] and "missing" in str(exc)
        finally:
            shutil.move(moved, pristine.files[role])


def test_failed_loads_leave_the_files_as_they_were(pristine: Case) -> None:
    data = bytearray(pristine.original["snapshot"])
    data[100] ^= 4
    pristine.write("snapshot", bytes(data))
    before = {role: (p.read_bytes(), p.stat().st_mtime_ns) for role, p in pristine.files.items()}
    listing = sorted(p.name for p in pristine.path.parent.iterdir())
    assert isinstance(_outcome(pristine), CorruptStoreError)
    assert {
        role: (p.read_bytes(), p.stat().st_mtime_ns) for role, p in pristine.files.items()
    } == before
    assert sorted(p.name for p in pristine.path.parent.iterdir()) == listing


def test_the_stores_are_small(pristine: Case) -> None:
    # The exhaustive tests above scale with these sizes: keep the stores small.
    sizes = {role: len(data) for role, data in pristine.original.items()}
    assert sizes["manifest"] == 88
    assert sizes["snapshot"] < 12_000
    assert sizes["journal"] < 12_000
    if pristine.name == "journal":
        assert sizes["journal"] > JOURNAL_HEADER_SIZE
    else:
        assert sizes["journal"] == JOURNAL_HEADER_SIZE
