"""``guardrefresh warm verify | inspect | export | import`` on real warm storage files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from factories import make_rule

from guardrefresh.cli import main
from guardrefresh.model import Rule, rules_from_json, rules_to_json
from guardrefresh.storage import WarmStore

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rules.json"


def build_store(path: Path, *, journal: bool = True) -> list[Rule]:
    """A store with a snapshot, and (``journal``) two journal segments incl. a deletion.

    Returns its live rules in storage order. Rules come from several installers, so an
    export needs per-rule installer fields.
    """
    store = WarmStore(path)
    try:
        base = [
            make_rule("a", seed=1, family_id="f1", layer="L1"),
            make_rule("b", seed=2, family_id="f1", layer="L2", agent_id="agent-x"),
            make_rule("c", seed=3, family_id="f2", layer="L1", installed_by="agent-y", owner=""),
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        table = store.write_snapshot_from(base)
        if not journal:
            return base
        table = store.append(table, [make_rule("d", seed=4, family_id="f2", params={"x": 1.0})])
        table = store.append(table, [make_rule("a", seed=5, family_id="f1", priority=1)], ["c"])
    finally:
        store.close()
    return [ref.rule for ref in table.iter_refs()]


def load_rules(path: Path) -> list[Rule]:
    store = WarmStore(path)
    try:
        return [ref.rule for ref in store.load().iter_refs()]
    finally:
        store.close()


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["warm", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def run_process(args: Sequence[str | Path], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDREFRESH_")}
    proc = subprocess.run(
        [sys.executable, "-m", "guardrefresh", "warm", *(str(a) for a in args)],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return proc


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("guardrefresh: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


# -- verify ------------------------------------------------------------------------


def test_verify_good_store(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    build_store(store_path)
    code, out, err = run(capsys, "verify", store_path)
    assert (code, err) == (0, "")
    [line] = out.splitlines()
    assert line.startswith(f"ok: {store_path}: 3 rules, bridge version 3, generation 1 ")
    assert "(snapshot + 2 journal segments)" in line


@pytest.mark.parametrize("role", ["snapshot", "journal", "manifest"])
def test_verify_corrupt_store_names_file_section_and_offset(
    capsys: pytest.CaptureFixture[str], store_path: Path, role: str
) -> None:
    build_store(store_path)
    store = WarmStore(store_path)
    target = {
        "snapshot": store.snapshot_path(1),
        "journal": store.journal_path(1),
        "manifest": store_path,
    }[role]
    flip_byte(target, target.stat().st_size - 20)
    code, out, err = run(capsys, "verify", store_path)
    assert (code, out) == (1, "")
    assert_one_error_line(err, "corrupt warm storage", repr(str(target)), "at offset")


def test_verify_missing_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "verify", tmp_path / "nothing" / "warm.bin")
    assert (code, out) == (1, "")
    assert_one_error_line(err, "no warm storage at", "does not exist")


def test_verify_corrupt_store_as_a_process_prints_one_line(store_path: Path) -> None:
    build_store(store_path)
    flip_byte(WarmStore(store_path).snapshot_path(1), 300)
    proc = run_process(["verify", store_path])
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, "corrupt warm storage", ".snap", "at offset")


# -- inspect -------------------------------------------------------------------------


def test_inspect_shows_the_version_the_store_was_written_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # tests/data/warm_v1: a store written by format 1 (see tests/test_storage.py).
    for source in (Path(__file__).parent / "data" / "warm_v1").iterdir():
        (tmp_path / source.name).write_bytes(source.read_bytes())
        (tmp_path / source.name).chmod(0o600)
    path = tmp_path / "warm_storage.bin"
    code, out, err = run(capsys, "inspect", path, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["format_version"] == 1
    code, out, _err = run(capsys, "verify", path)
    assert code == 0 and out.startswith(f"ok: {path}: 3 rules")


def test_inspect_json(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    build_store(store_path)
    code, out, err = run(capsys, "inspect", store_path, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    store = WarmStore(store_path)
    assert report["format_version"] == 2
    assert (report["generation"], report["bridge_version"], report["rule_count"]) == (1, 3, 3)
    assert (report["global_rules"], report["scoped_rules"]) == (2, 1)
    assert report["families"] == {"f1": 2, "f2": 1}
    assert report["layers"] == {"L1": 2, "L2": 1}
    assert [(t["family_id"], t["layer_id"], t["rule_count"]) for t in report["tables"]] == [
        ("f1", "L1", 1),
        ("f1", "L2", 1),
        ("f2", "L1", 1),
    ]
    files = report["files"]
    assert files["manifest"]["bytes"] == store_path.stat().st_size
    assert files["snapshot"] == {
        "path": str(store.snapshot_path(1)),
        "bytes": store.snapshot_path(1).stat().st_size,
    }
    assert files["journal"]["segments"] == 2
    assert files["journal"]["bytes"] == files["journal"]["committed_bytes"]


def test_inspect_text(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    build_store(store_path)
    code, out, err = run(capsys, "inspect", store_path)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"warm storage {store_path}"
    assert "  format version:  2" in lines
    assert "  rules:           3 (2 global, 1 scoped)" in lines
    assert any(line.startswith("    journal   ") and "2 segments" in line for line in lines)
    assert '    "f1"  2' in lines and '    "L2"  1' in lines
    tables = lines[lines.index("  tables:") + 1 :]
    assert tables == [
        "    family  layer  rules  global  scoped  version",
        '    "f1"    "L1"       1       1       0        3',
        '    "f1"    "L2"       1       0       1        1',
        '    "f2"    "L1"       1       1       0        3',
    ]


def test_inspect_corrupt_store_fails(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    build_store(store_path)
    flip_byte(WarmStore(store_path).journal_path(1), 100)
    code, out, err = run(capsys, "inspect", store_path, "--json")
    assert (code, out) == (1, "")
    assert_one_error_line(err, "corrupt warm storage", ".journal")


# -- export / import -------------------------------------------------------------------


def test_export_to_stdout_holds_every_rule_exactly(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    stored = build_store(store_path)
    code, out, err = run(capsys, "export", store_path)
    assert (code, err) == (0, "")
    assert rules_from_json(out) == stored
    assert out == rules_to_json(stored)


def test_export_then_import_round_trips_every_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "good" / "warm_storage.bin"
    stored = build_store(source)
    exported = tmp_path / "rules.json"
    code, out, err = run(capsys, "export", source, "-o", exported)
    assert (code, err) == (0, "")
    assert out.startswith(f"exported 3 rules (bridge version 3) from {source} to {exported} (")
    assert exported.stat().st_mode & 0o777 == 0o600

    rebuilt = tmp_path / "new" / "dir" / "warm_storage.bin"  # absent: import creates it
    code, out, err = run(capsys, "import", rebuilt, exported)
    assert (code, err) == (0, "")
    assert out.startswith(f"imported 3 rules from {exported} into {rebuilt}: generation 1, ")
    assert rebuilt.parent.stat().st_mode & 0o777 == 0o700
    assert load_rules(rebuilt) == stored
    for a, b in zip(load_rules(rebuilt), stored, strict=True):
        assert (a.installed_by, a.config_id, a.owner) == (b.installed_by, b.config_id, b.owner)
        assert a.anchors.vectors.tobytes() == b.anchors.vectors.tobytes()

    # And once more: the rebuilt store exports to the very same document.
    code, out, err = run(capsys, "export", rebuilt)
    assert out == exported.read_text(encoding="utf-8")


def test_import_refuses_a_store_with_rules_unless_forced(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    stored = build_store(store_path)
    before = {p.name: p.read_bytes() for p in store_path.parent.iterdir()}
    code, out, err = run(capsys, "import", store_path, EXAMPLE)
    assert (code, out) == (1, "")
    assert_one_error_line(err, "holds 3 rules; pass --force", "the 4 rules of")
    assert {p.name: p.read_bytes() for p in store_path.parent.iterdir()} == before
    assert load_rules(store_path) == stored

    code, out, err = run(capsys, "import", store_path, EXAMPLE, "--force")
    assert (code, err) == (0, "")
    assert out.endswith("; replaced 3 rules\n")
    assert "bridge version 4" in out  # the next version after the replaced store's
    assert load_rules(store_path) == rules_from_json(EXAMPLE.read_bytes())


def test_import_into_an_empty_store_needs_no_force(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    store = WarmStore(store_path)
    store.open(make_dirs=True)
    store.close()
    code, out, err = run(capsys, "import", store_path, EXAMPLE)
    assert (code, err) == (0, "")
    assert out.startswith(f"imported 4 rules from {EXAMPLE} into {store_path}: generation 2, ")
    assert "replaced" not in out
    assert len(load_rules(store_path)) == 4


def test_import_rebuilds_a_corrupt_store_only_with_force(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    build_store(store_path)
    flip_byte(store_path, 12)  # the manifest: the store cannot even be read
    code, out, err = run(capsys, "import", store_path, EXAMPLE)
    assert (code, out) == (1, "")
    assert_one_error_line(err, "corrupt warm storage", "pass --force")
    code, out, err = run(capsys, "import", store_path, EXAMPLE, "--force")
    assert (code, err) == (0, "")
    assert load_rules(store_path) == rules_from_json(EXAMPLE.read_bytes())
    code, out, err = run(capsys, "verify", store_path)
    assert code == 0 and out.startswith("ok: ")


def test_import_of_an_invalid_file_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store_path: Path
) -> None:
    doc = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    doc["rules"][1]["anchors"]["data"][2] = doc["rules"][1]["anchors"]["data"][2][:-1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    code, out, err = run(capsys, "import", store_path, bad, "--force")
    assert (code, out) == (1, "")
    assert_one_error_line(
        err,
        f"{bad}: rule 'deny-pii-in-outbound-email': anchors.data[2]: "
        "anchor vectors have exactly 32 values, got 31",
    )
    assert not store_path.parent.joinpath("warm_storage.bin").exists()


def test_import_from_stdin_as_a_process(store_path: Path) -> None:
    proc = run_process(["import", store_path, "-"], stdin=EXAMPLE.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"imported 4 rules from <stdin> into {store_path}")
    assert load_rules(store_path) == rules_from_json(EXAMPLE.read_bytes())


# -- usage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "the following arguments are required: ACTION"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["verify"], "the following arguments are required: PATH"),
        (["export", "p", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    code, out, err = run(capsys, *args)
    assert (code, out) == (2, "")
    assert_one_error_line(err, fragment, "--help")


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "import", "--help")
    assert (code, err) == (0, "")
    assert "usage: guardrefresh warm import [-h] [--force] PATH FILE" in out


def test_export_into_a_closed_pipe_stops_quietly(store_path: Path) -> None:
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store = WarmStore(store_path)
    try:
        store.write_snapshot_from([make_rule(f"r{i}", seed=i) for i in range(100)])
    finally:
        store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDREFRESH_")}
    with subprocess.Popen(
        [sys.executable, "-m", "guardrefresh", "warm", "export", str(store_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(100).startswith(b"{\n")
        proc.stdout.close()  # like `| head -c 100`: the rest (~300 KB) has nowhere to go
        err = proc.stderr.read()
        code = proc.wait(timeout=60)
    assert (code, err) == (1, b"")
