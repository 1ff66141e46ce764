"""``guardrefresh warm ...``: offline tools for a warm storage file; no service involved.

- ``verify PATH``: load and verify everything (manifest, snapshot, journal, every rule);
- ``inspect PATH [--json]``: the manifest, the files, counts by family and layer;
- ``export PATH [-o OUT]``: every rule, in the rules JSON format;
- ``import PATH FILE [--force]``: replace the whole store with exactly the rules of FILE.

Export then import is the runbook's "rebuild warm storage": export from a good copy (or
take the management plane's source), import into the damaged service's path, then
restart the service or run ``guardrefresh refresh``. ``import`` writes a new snapshot
generation and switches the manifest to it atomically, under the store's writer lock:
a crash leaves either the old store or the new one.

Exit codes as for the other subcommands: 0 done, 1 failed (with the reason on one
stderr line: a corrupt store names the file, the section and the offset), 2 bad
command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..model import Rule, RuleValidationError, iter_rules_json
from ..storage import Manifest, StorageError, WarmStore, WarmTable, atomic_write
from ._client import read_rules_file
from ._command import EXIT_OK, CommandError, CommandParser, run_command
from ._format import utc_text

__all__ = ["WARM_COMMANDS", "warm_command"]

_DIR_MODE = 0o700


def warm_command(argv: Sequence[str]) -> int:
    """``guardrefresh warm ACTION ...``; returns the exit code."""
    return run_command(_build_parser(), argv, _dispatch)


def _build_parser() -> CommandParser:
    parser = CommandParser(
        prog="guardrefresh warm",
        description="Offline tools for a warm storage file (the service need not run).",
        epilog="Exit codes: 0 done, 1 failed, 2 bad command line.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    verify = actions.add_parser(
        "verify",
        help="load and verify the whole store",
        description="Load and verify the whole store: manifest, snapshot, journal and "
        "every rule. Exit 0 with a one-line summary when good, 1 with the reason "
        "(file, section, offset) when not.",
    )
    verify.add_argument("path", metavar="PATH", type=Path, help="the store's manifest file")

    inspect = actions.add_parser(
        "inspect",
        help="show the manifest, files and counts by family and layer",
        description="Show the manifest (format version, generation, bridge version, "
        "rule count), the files and their sizes, the journal segments, and rule "
        "counts by family and layer. Verifies the store on the way.",
    )
    inspect.add_argument("path", metavar="PATH", type=Path, help="the store's manifest file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")

    export = actions.add_parser(
        "export",
        help="write every rule as a rules JSON document",
        description="Write every rule of the store as a rules JSON document "
        "(docs/rules-json.md); reading it back gives exactly the same rules.",
    )
    export.add_argument("path", metavar="PATH", type=Path, help="the store's manifest file")
    export.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="write to OUT (replaced atomically, mode 0600) instead of stdout",
    )

    import_ = actions.add_parser(
        "import",
        help="replace the whole store with the rules of a rules JSON file",
        description="Replace the whole store with exactly the rules in FILE, crash-safely "
        "(a new snapshot generation). Creates the store and its directory when absent. "
        "Refuses to replace a store that holds rules unless --force is given.",
    )
    import_.add_argument("path", metavar="PATH", type=Path, help="the store's manifest file")
    import_.add_argument("file", metavar="FILE", help="rules JSON file; - reads stdin")
    import_.add_argument(
        "--force", action="store_true", help="replace a store that already holds rules"
    )
    return parser


def _dispatch(options: argparse.Namespace) -> int:
    handlers: Mapping[str, Callable[[argparse.Namespace], int]] = {
        "verify": _verify,
        "inspect": _inspect,
        "export": _export,
        "import": _import,
    }
    return handlers[options.action](options)


# ------------------------------------------------------------------------- reading ---


def _open(path: Path) -> tuple[WarmTable, Manifest]:
    """Load and verify the store at ``path``; CommandError with the reason if it cannot."""
    if not path.exists():
        where = "" if path.parent.is_dir() else f" (directory {str(path.parent)!r} does not exist)"
        raise CommandError(f"no warm storage at {str(path)!r}{where}")
    store = WarmStore(path)
    try:
        table = store.load()
        manifest = store.read_manifest()
        if (manifest.generation, manifest.bridge_version) != (
            table.generation,
            table.bridge_version,
        ):
            raise CommandError(f"warm storage {str(path)!r} changed while reading; try again")
    except StorageError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    return table, manifest


def _rules(path: Path, table: WarmTable) -> list[Rule]:
    """Decode and validate every live rule: checksums catch damage, this catches the rest."""
    rules = []
    for ref in table.iter_refs():
        try:
            rule = ref.rule
            rule.validate()
        except RuleValidationError as exc:
            raise CommandError(f"invalid rule in warm storage {str(path)!r}: {exc}") from None
        except Exception as exc:  # a verified segment whose content cannot be decoded
            raise CommandError(
                f"corrupt warm storage {str(path)!r}: rule {ref.rule_id!r} cannot be "
                f"decoded: {type(exc).__name__}: {exc}"
            ) from None
        rules.append(rule)
    return rules


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ------------------------------------------------------------------------- actions ---


def _verify(options: argparse.Namespace) -> int:
    path: Path = options.path
    started = time.perf_counter()
    table, manifest = _open(path)
    rules = _rules(path, table)
    seconds = time.perf_counter() - started
    print(
        f"ok: {path}: {len(rules)} rules, bridge version {manifest.bridge_version}, "
        f"generation {manifest.generation} (snapshot + {len(table.segments) - 1} journal "
        f"segments), verified in {seconds:.2f}s"
    )
    return EXIT_OK


def _inspect(options: argparse.Namespace) -> int:
    path: Path = options.path
    table, manifest = _open(path)
    store = WarmStore(path)
    snapshot = store.snapshot_path(manifest.generation)
    journal = store.journal_path(manifest.generation)
    tables = table.table_stats()
    families: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    for t in tables:
        families[t.family_id] += t.rule_count
        layers[t.layer_id] += t.rule_count
    global_count = sum(t.global_count for t in tables)
    report: dict[str, Any] = {
        "path": str(path),
        "format_version": manifest.format_version,
        "generation": manifest.generation,
        "bridge_version": manifest.bridge_version,
        "rule_count": manifest.rule_count,
        "global_rules": global_count,
        "scoped_rules": manifest.rule_count - global_count,
        "updated_at_ms": manifest.updated_at_ms,
        "files": {
            "manifest": {"path": str(path), "bytes": _file_size(path)},
            "snapshot": {"path": str(snapshot), "bytes": manifest.snapshot_size},
            "journal": {
                "path": str(journal),
                "bytes": _file_size(journal),
                "committed_bytes": manifest.journal_size,
                "segments": len(table.segments) - 1,
            },
        },
        "families": dict(sorted(families.items())),
        "layers": dict(sorted(layers.items())),
        "tables": [
            {
                "family_id": t.family_id,
                "layer_id": t.layer_id,
                "version": t.version,
                "rule_count": t.rule_count,
                "global_count": t.global_count,
                "scoped_count": t.scoped_count,
            }
            for t in tables
        ],
    }
    if options.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print("\n".join(_inspect_lines(report)))
    return EXIT_OK


def _inspect_lines(report: dict[str, Any]) -> list[str]:
    files = report["files"]
    journal = files["journal"]
    tail = journal["bytes"] - journal["committed_bytes"]
    lines = [
        f"warm storage {report['path']}",
        f"  format version:  {report['format_version']}",
        f"  generation:      {report['generation']}",
        f"  bridge version:  {report['bridge_version']}",
        f"  rules:           {report['rule_count']} "
        f"({report['global_rules']} global, {report['scoped_rules']} scoped)",
        f"  updated:         {utc_text(report['updated_at_ms'])}",
        "  files:",
        f"    manifest  {files['manifest']['path']}  {_size(files['manifest']['bytes'])}",
        f"    snapshot  {files['snapshot']['path']}  {_size(files['snapshot']['bytes'])}",
        f"    journal   {journal['path']}  {_size(journal['committed_bytes'])}, "
        f"{journal['segments']} segments"
        + (f" (+{_size(tail)} uncommitted tail, ignored)" if tail > 0 else ""),
    ]
    for title, counts in (("by family", report["families"]), ("by layer", report["layers"])):
        lines.append(f"  {title}:" + ("" if counts else " -"))
        width = max((len(json.dumps(name, ensure_ascii=False)) for name in counts), default=0)
        lines.extend(
            f"    {json.dumps(name, ensure_ascii=False):<{width}}  {count}"
            for name, count in counts.items()
        )
    if report["tables"]:
        header = ("family", "layer", "rules", "global", "scoped", "version")
        rows = [header] + [
            (
                json.dumps(t["family_id"], ensure_ascii=False),
                json.dumps(t["layer_id"], ensure_ascii=False),
                str(t["rule_count"]),
                str(t["global_count"]),
                str(t["scoped_count"]),
                str(t["version"]),
            )
            for t in report["tables"]
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines.append("  tables:")
        lines.extend(
            "    "
            + "  ".join(
                cell.ljust(width) if i < 2 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        )
    return lines


def _export(options: argparse.Namespace) -> int:
    path: Path = options.path
    table, manifest = _open(path)
    rules = _rules(path, table)
    chunks = iter_rules_json(rules)
    if options.output in (None, "-"):
        for chunk in chunks:
            sys.stdout.write(chunk)
        sys.stdout.flush()
        return EXIT_OK
    out = Path(options.output)
    try:
        size = atomic_write(out, (chunk.encode("utf-8") for chunk in chunks))
    except StorageError as exc:
        raise CommandError(f"cannot write {str(out)!r}: {exc}") from None
    print(
        f"exported {len(rules)} rules (bridge version {manifest.bridge_version}) "
        f"from {path} to {out} ({_size(size)})"
    )
    return EXIT_OK


def _import(options: argparse.Namespace) -> int:
    path: Path = options.path
    label = "<stdin>" if options.file == "-" else options.file
    rules = read_rules_file(options.file)
    store = WarmStore(path)
    replaced = 0
    if path.exists():
        try:
            replaced = store.read_manifest().rule_count
        except StorageError as exc:
            if not options.force:
                raise CommandError(
                    f"{exc}; pass --force to replace it with the rules of {label}"
                ) from None
        if replaced and not options.force:
            raise CommandError(
                f"warm storage {str(path)!r} holds {replaced} rules; pass --force to replace "
                f"them with the {len(rules)} rules of {label}"
            )
    try:
        path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            f"cannot create directory {str(path.parent)!r}: {exc.strerror}"
        ) from None
    try:
        table = store.write_snapshot_from(rules)
    except StorageError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    snapshot = store.snapshot_path(table.generation)
    print(
        f"imported {len(table)} rules from {label} into {path}: generation "
        f"{table.generation}, bridge version {table.bridge_version}, snapshot "
        f"{_size(_file_size(snapshot))}" + (f"; replaced {replaced} rules" if replaced else "")
    )
    return EXIT_OK


#: The offline subcommands, for the dispatch table of ``guardrefresh``.
WARM_COMMANDS: Mapping[str, Callable[[Sequence[str]], int]] = {"warm": warm_command}
