"""The one entry point of the guardrefresh benchmarks; writes one JSON document.

Usage (from the repository root)::

    python -m bench.run [--sizes 1000,10000,100000]
                        [--only storage,refresh,grpc,edge,codec,enforce,enforce_grpc,telemetry,fleet]
                        [--out bench/results/latest.json] [--tiny]

``--tiny`` shrinks every size, repeat count and window so the whole run takes
well under a minute (tests/test_bench.py runs it); its numbers say nothing about
the targets, which then read ``met: null``.

The document: ``meta`` (machine, versions, plan, timings) and one section per
benchmark group (``storage``, ``refresh``, ``grpc``, ``edge``, ``codec``, ``enforce``,
``enforce_grpc``, ``telemetry``, ``fleet``), each mapping a benchmark name to its parameters, samples
summary, median, p99, targets and ``met``;
``summary`` lists every benchmark that has a target, with its verdict.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from ._data import Plan, Workspace, machine_info

__all__ = ["main", "run"]

logger = logging.getLogger("bench")

GROUPS = (
    "storage",
    "refresh",
    "grpc",
    "edge",
    "codec",
    "enforce",
    "enforce_grpc",
    "telemetry",
    "fleet",
)
DEFAULT_SIZES = (1000, 10_000, 100_000)
DEFAULT_OUT = Path("bench/results/latest.json")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise argparse.ArgumentTypeError(
            f"--only takes a comma-separated subset of {','.join(GROUPS)}, got {text!r}"
        )
    return groups


def _runners() -> dict[str, Callable[[Workspace, Plan], dict[str, Any]]]:
    from .codec import run_codec
    from .edge import run_edge
    from .enforce import run_enforce
    from .enforce_grpc import run_enforce_grpc
    from .fleet import run_fleet
    from .grpc_server import run_grpc
    from .refresh import run_refresh
    from .storage import run_storage
    from .telemetry import run_telemetry

    return {
        "storage": run_storage,
        "refresh": run_refresh,
        "grpc": run_grpc,
        "edge": run_edge,
        "codec": run_codec,
        "enforce": run_enforce,
        "enforce_grpc": run_enforce_grpc,
        "telemetry": run_telemetry,
        "fleet": run_fleet,
    }


def _summary(document: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for group in GROUPS:
        for name, result in document.get(group, {}).items():
            # A group that could not run records {"skipped": reason}.
            if isinstance(result, dict) and result.get("targets"):
                rows.append(
                    {
                        "benchmark": f"{group}.{name}",
                        "median": result["median"],
                        "p99": result["p99"],
                        "unit": result["unit"],
                        "targets": result["targets"],
                        "met": result["met"],
                    }
                )
    return rows


def run(
    plan: Plan, groups: Sequence[str], out: Path, *, workdir: Path | None = None
) -> dict[str, Any]:
    """Run ``groups`` under ``plan``; write the document to ``out`` and return it."""
    started = time.perf_counter()
    document: dict[str, Any] = {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
            "groups": list(groups),
            "plan": attrs.asdict(plan),
            "machine": machine_info(),
            "statistics": "median over repeats; p99 is nearest-rank (the max below 100 samples)",
        }
    }
    root = workdir or Path(tempfile.mkdtemp(prefix="guardrefresh-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
    runners = _runners()
    timings: dict[str, float] = {}
    try:
        for group in groups:
            logger.info("== %s", group)
            t0 = time.perf_counter()
            document[group] = runners[group](ws, plan)
            timings[group] = time.perf_counter() - t0
        timings["rule_generation_excluded"] = ws.ruleset.generation_s
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    document["meta"]["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    document["meta"]["total_seconds"] = round(time.perf_counter() - started, 3)
    document["meta"]["loadavg_at_end"] = list(os.getloadavg())
    document["summary"] = _summary(document)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    tmp.replace(out)
    return document


def _format(document: dict[str, Any]) -> str:
    lines = []
    for row in document["summary"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        lines.append(
            f"{row['benchmark']:<60} median {row['median']:>10.3f} {row['unit']:<6} "
            f"p99 {row['p99']:>10.3f}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Benchmarks of guardrefresh; writes JSON."
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        help="rule counts, comma-separated (default 1000,10000,100000)",
    )
    parser.add_argument(
        "--only",
        type=_groups,
        default=GROUPS,
        help=f"benchmark groups to run, comma-separated subset of {','.join(GROUPS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where to write the JSON document (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny sizes, few repeats, short windows: a smoke run (< 1 min)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep stores and logs here instead of a removed temp directory",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    plan = Plan.tiny_plan(args.sizes) if args.tiny else Plan.full(args.sizes or DEFAULT_SIZES)
    document = run(plan, args.only, args.out, workdir=args.workdir)
    sys.stdout.write(_format(document) + "\n")
    sys.stdout.write(f"results: {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
