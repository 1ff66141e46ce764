"""What every benchmark shares: realistic rules, stores built once, the plan, summaries.

Rules: every rule has FULL anchors (16 vectors in each of the 4 slots, so
8 KiB of float32), a few params of each type, a JSON ``modification_spec``,
``slice_weights``, one of the four policy types, one of 20 families x 3
layers, and is either global or scoped to one of 40 agents. Generating 100k
:class:`Rule` objects takes seconds, so :class:`RuleSet` builds them once,
on demand, in chunks (each chunk's anchors are one read-only float32 array and
each rule's :class:`RuleAnchors` is a view of its row); every size is a
prefix of the same list.

Stores: :class:`Workspace` writes one store per size, once, and hands out
cheap writable clones (the snapshot file is never modified in place, so a
clone hard-links it and copies only the manifest and the journal).

Results: :func:`entry` is the one shape of every benchmark in the JSON
document: parameters, a samples summary, the median (and p99), the target
and whether it was met. ``met`` is ``None`` when the target does not apply
(e.g. a ``--tiny`` size).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from guardrefresh.model import BLOCK_SHAPE, MAX_ANCHORS, PolicyType, Rule, RuleAnchors
from guardrefresh.storage import WarmStore

__all__ = [
    "FAMILIES",
    "LAYERS",
    "STORE_NAME",
    "Plan",
    "RuleSet",
    "Target",
    "Workspace",
    "entry",
    "machine_info",
    "make_batch",
    "make_rules",
    "summarize",
]

FAMILIES: tuple[str, ...] = tuple(f"family-{i:02d}" for i in range(20))
LAYERS: tuple[str, ...] = ("L1", "L2", "L3")
AGENTS: tuple[str, ...] = tuple(f"agent-{i:03d}" for i in range(40))
STORE_NAME = "warm_storage.bin"
_POLICIES = tuple(PolicyType)
_FULL = (MAX_ANCHORS,) * 4
_CREATED_MS = 1_700_000_000_000


# -- rules --------------------------------------------------------------------------------


def _anchor_block(n: int, seed: int) -> npt.NDArray[np.float32]:
    """``n`` full anchor blocks in one read-only array."""
    rng = np.random.default_rng(seed)
    block = rng.random((n, *BLOCK_SHAPE), dtype=np.float32)
    block -= 0.5
    block.flags.writeable = False
    return block


def _rule(i: int, anchors: npt.NDArray[np.float32], *, prefix: str, agent: str | None) -> Rule:
    family = FAMILIES[i % len(FAMILIES)]
    layer = LAYERS[(i // len(FAMILIES)) % len(LAYERS)]
    # About a third global, the rest scoped to one of the agents.
    agent_id = ("" if i % 3 == 0 else AGENTS[i % len(AGENTS)]) if agent is None else agent
    spec = {
        "action": "redact" if i % 2 else "block",
        "fields": ["ssn", "card_number", f"field_{i % 17}"],
        "threshold": round(0.05 * (i % 10), 2),
        "notify": {"channel": "sec-ops", "severity": i % 4},
    }
    return Rule(
        rule_id=f"{prefix}{i:08d}",
        family_id=family,
        layer=layer,
        agent_id=agent_id,
        priority=i % 1000,
        enabled=i % 50 != 0,
        created_at_ms=_CREATED_MS + i,
        params={
            "mode": "strict" if i % 2 else "lenient",
            "region": ("eu-west", "us-east", "ap-south")[i % 3],
            "max_hits": 10 + i % 90,
            "window_s": 60 * (1 + i % 5),
            "ratio": 0.25 + (i % 4) * 0.125,
            "score_floor": 0.5,
            "audit": bool(i % 2),
            "block_on_error": True,
            "tags": ("pii", "finance", f"t{i % 7}"),
        },
        anchors=RuleAnchors(anchors, _FULL),
        policy_type=_POLICIES[i % len(_POLICIES)],
        drift_threshold=0.125 + (i % 8) * 0.0625,
        modification_spec=json.dumps(spec, separators=(",", ":")),
        slice_weights=(0.4, 0.3, 0.2, 0.1),
        # Install batches are stamped by the bridge; stored rules carry their installer.
        installed_by="" if agent is not None else ("mgmt" if i % 3 == 0 else agent_id),
        config_id=f"cfg-{i % 13}",
        owner=("team-risk", "team-privacy", "team-payments")[i % 3],
    )


def make_rules(
    n: int, *, seed: int = 0, prefix: str = "rule-", agent: str | None = None, start: int = 0
) -> list[Rule]:
    """``n`` distinct, valid rules with ids ``{prefix}{start:08d}`` onwards.

    ``agent`` scopes every rule to one agent (what one InstallRules request
    carries); by default the rules are a mix of global and scoped ones.
    """
    block = _anchor_block(n, seed)
    return [_rule(start + k, block[k], prefix=prefix, agent=agent) for k in range(n)]


def make_batch(batch: int, number: int, *, agent: str) -> list[Rule]:
    """Batch ``number`` of ``batch`` new rules for ``agent``; ids never repeat across batches."""
    return make_rules(batch, seed=1_000_000 + number, prefix=f"batch-{number:05d}-", agent=agent)


class RuleSet:
    """Benchmark rules ``rule-00000000`` onwards, generated on demand and kept.

    Generated in chunks whose anchors come from their own seed, so rule ``i`` is
    the same whichever sizes were asked for first (and in every run).
    """

    CHUNK = 1000

    def __init__(self, *, seed: int = 0) -> None:
        self._seed = seed
        self._rules: list[Rule] = []
        #: Seconds spent generating rules so far (never part of a measurement).
        self.generation_s = 0.0

    def rules(self, n: int) -> list[Rule]:
        """The first ``n`` rules."""
        if n > len(self._rules):
            started = time.perf_counter()
            while len(self._rules) < n:
                chunk = len(self._rules) // self.CHUNK
                block = _anchor_block(self.CHUNK, self._seed * 1_000_003 + chunk)
                first = chunk * self.CHUNK
                self._rules.extend(
                    _rule(first + k, block[k], prefix="rule-", agent=None)
                    for k in range(self.CHUNK)
                )
            self.generation_s += time.perf_counter() - started
        return self._rules[:n]


# -- stores -------------------------------------------------------------------------------


class Workspace:
    """A scratch directory holding one pristine store per size, built on first use.

    Pristine stores are only ever read; benchmarks that write get a
    :meth:`clone`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ruleset = RuleSet()
        self._stores: dict[int, Path] = {}
        self._clones = 0

    def fresh_dir(self, name: str) -> Path:
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(mode=0o700, parents=True)
        return path

    def adopt(self, n: int, path: Path) -> None:
        """Make the store at ``path`` (holding exactly ``ruleset.rules(n)``) the pristine one."""
        old = self._stores.get(n)
        if old is not None and old != path:
            shutil.rmtree(old.parent, ignore_errors=True)
        self._stores[n] = path

    def store(self, n: int) -> Path:
        """The manifest path of a store of the first ``n`` rules (written on first use)."""
        path = self._stores.get(n)
        if path is None:
            path = self.fresh_dir(f"store-{n}") / STORE_NAME
            store = WarmStore(path)
            try:
                store.write_snapshot_from(self.ruleset.rules(n))
            finally:
                store.close()
            self._stores[n] = path
        return path

    def clone(self, n: int) -> Path:
        """A writable copy of the pristine store of ``n`` rules, made in milliseconds."""
        source = self.store(n)
        self._clones += 1
        target_dir = self.fresh_dir(f"clone-{self._clones}-{n}")
        for item in source.parent.iterdir():
            if item.name.endswith(".snap"):
                os.link(item, target_dir / item.name)
            elif item.name == STORE_NAME or item.name.endswith(".journal"):
                shutil.copy2(item, target_dir / item.name)
        return target_dir / STORE_NAME


# -- plan ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Plan:
    """Sizes, repeat counts and windows of one run (``--tiny`` shrinks all of them)."""

    sizes: tuple[int, ...]
    tiny: bool
    write_repeats: int
    load_repeats: int
    install_batches: int
    install_batch_size: int = 10
    refresh_repeats: int
    hot_capacity: int = 10_000
    #: Store size for every gRPC benchmark (RefreshRules is specified at 10k).
    grpc_rules: int
    #: Rounds of fresh server processes for the stack comparison.
    grpc_rounds: int
    #: Back-to-back runs of each stack per method and round (one pair = one ratio sample).
    grpc_pairs: int
    grpc_requests: dict[str, int]
    grpc_streams: int
    refresh_rpc_calls: int
    idle_window_s: float
    #: The flood of the admission benchmark: processes x connections x streams, seconds.
    edge_flood_processes: int
    edge_connections: int
    edge_streams: int
    edge_seconds: float
    #: Timed samples per codec benchmark.
    codec_repeats: int = 15

    @classmethod
    def full(cls, sizes: Sequence[int]) -> Plan:
        return cls(
            sizes=tuple(sorted(set(sizes))),
            tiny=False,
            write_repeats=3,
            load_repeats=7,
            install_batches=40,
            refresh_repeats=7,
            grpc_rules=10_000,
            # Single pairs scatter by ±20 % on these shared machines, at every run
            # length tried (0.5-2 s), and 15-pair medians of the same code moved by
            # ±0.06 from run to run: 3 rounds of 20 short pairs.
            grpc_rounds=3,
            grpc_pairs=20,
            grpc_requests={"GetRuleStats": 250, "GetRule": 200},
            grpc_streams=4,
            refresh_rpc_calls=200,
            idle_window_s=60.0,
            # The 500 x 50 cannot be generated beside the server on 2 cores.
            edge_flood_processes=2,
            edge_connections=50,
            edge_streams=20,
            edge_seconds=20.0,
        )

    @classmethod
    def tiny_plan(cls, sizes: Sequence[int] | None = None) -> Plan:
        chosen = tuple(sorted(set(sizes))) if sizes else (50, 200)
        return cls(
            sizes=chosen,
            tiny=True,
            write_repeats=2,
            load_repeats=3,
            install_batches=4,
            refresh_repeats=3,
            hot_capacity=10_000,
            grpc_rules=max(chosen),
            grpc_rounds=1,
            grpc_pairs=2,
            grpc_requests={"GetRuleStats": 100, "GetRule": 50},
            grpc_streams=2,
            refresh_rpc_calls=10,
            idle_window_s=2.0,
            edge_flood_processes=1,
            edge_connections=2,
            edge_streams=5,
            edge_seconds=3.0,
            codec_repeats=3,
        )


# -- results ------------------------------------------------------------------------------


@attrs.frozen
class Target:
    """``stat op value``, e.g. median <= 50 ms; applies only to the stated sizes."""

    stat: str
    op: str
    value: float
    unit: str

    def check(self, measured: float) -> bool:
        if self.op == "<=":
            return measured <= self.value
        if self.op == ">=":
            return measured >= self.value
        raise ValueError(f"unknown op {self.op!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"stat": self.stat, "op": self.op, "value": self.value, "unit": self.unit}


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: with fewer than 100 samples, p99 is the maximum."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Iterable[float]) -> dict[str, float | int]:
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("no samples")
    return {
        "n": len(values),
        "min": values[0],
        "median": float(np.median(values)),
        "mean": sum(values) / len(values),
        "p90": _percentile(values, 90),
        "p99": _percentile(values, 99),
        "max": values[-1],
    }


def entry(
    *,
    parameters: dict[str, Any],
    unit: str,
    samples: Sequence[float],
    targets: Sequence[Target] = (),
    extra: dict[str, Any] | None = None,
    applies: bool = True,
) -> dict[str, Any]:
    """One benchmark's result. ``applies=False`` records the targets but sets ``met`` to None."""
    summary = summarize(samples)
    result: dict[str, Any] = {
        "parameters": parameters,
        "unit": unit,
        "samples": summary,
        "median": summary["median"],
        "p99": summary["p99"],
        "targets": [t.as_dict() for t in targets],
        "target": targets[0].as_dict() if len(targets) == 1 else None,
        "met": None,
    }
    if targets and applies:
        checks = {
            f"{t.stat} {t.op} {t.value:g} {t.unit}": t.check(summary[t.stat]) for t in targets
        }
        result["checks"] = checks
        result["met"] = all(checks.values())
    if extra:
        result.update(extra)
    return result


# -- environment --------------------------------------------------------------------------


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (they drift between machines and runs)."""
    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total_mib": _mem_total_mib(),
        "loadavg_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "versions": {
            name: _version(name)
            for name in (
                "numpy",
                "trio",
                "trio-asyncio",
                "grpclib",
                "betterproto2",
                "xxhash",
                "grpcio",
                "attrs",
                "guardrefresh",
            )
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty_files": len(_git("status", "--porcelain").splitlines()),
    }
