"""Helpers of the reliability suite: grpcio rule builders, a mixed-load generator, store
builders and readers, and the Prometheus scrape.

The service itself is started with :func:`support.service.running_service`. Everything
here blocks (threads, grpcio): the reliability tests drive real processes with real
signals over loopback on the real clock, from plain functions and worker threads.
"""

from __future__ import annotations

import random
import threading
import time
import types
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from grpcio_support import HOST, DataPlaneClient, Outcome
from support.payloads import anchors_payload

from guardrefresh.model import PolicyType, Rule, RuleAnchors
from guardrefresh.storage import WarmStore

# ------------------------------------------------------------------ grpcio side ---


def pb_rule(
    pb2: Any,
    rule_id: str,
    *,
    seed: int = 0,
    counts: Sequence[int] = (1, 2, 0, 3),
    anchors: Any = None,
    **fields: Any,
) -> Any:
    """A valid RuleInstance (grpcio message); ``fields`` override the defaults."""
    values: dict[str, Any] = {
        "family_id": "fam",
        "layer": "L1",
        "priority": seed,
        "enabled": True,
        "created_at_ms": 1_700_000_000_000 + seed,
        "policy_type": "forbidden",
        "drift_threshold": 0.5,
        "modification_spec": '{"redact": ["ssn"]}',
    }
    values.update(fields)
    rule = pb2.RuleInstance(rule_id=rule_id, **values)
    rule.params["seed"].int_value = seed
    rule.anchors.CopyFrom(
        anchors if anchors is not None else anchors_payload(counts, seed=seed, pb2=pb2)
    )
    return rule


@attrs.frozen
class Observed:
    """What the service shows of its rules: GetRuleStats and GetRule of some ids (as bytes)."""

    stats: bytes
    rules: Mapping[str, bytes]

    @classmethod
    def take(cls, client: DataPlaneClient, rule_ids: Sequence[str]) -> Observed:
        pb2 = client.pb2
        stats = client.stats().SerializeToString(deterministic=True)
        rules = {}
        for rule_id in rule_ids:
            # Not ``tier``: a warm lookup promotes the rule, the next one answers "hot".
            response = client.call("GetRule", pb2.GetRuleRequest(rule_id=rule_id))
            rules[rule_id] = response.rule.SerializeToString(deterministic=True)
        return cls(stats, rules)


# ------------------------------------------------------------------- mixed load ---


@attrs.define
class LoadReport:
    """What a :class:`MixedLoad` did: outcomes by (method, code), and what was acknowledged."""

    calls: Counter[tuple[str, str]] = attrs.Factory(Counter)
    #: rule id -> the priority (a per-worker sequence number) its last acknowledged install set.
    acked: dict[str, int] = attrs.Factory(dict)
    #: rule id -> priorities sent after the last acknowledgement (may or may not have landed).
    unacked: dict[str, set[int]] = attrs.Factory(dict)
    unexpected: list[str] = attrs.Factory(list)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def ok(self, method: str) -> int:
        return self.calls[(method, "OK")]


class MixedLoad:
    """Worker threads sending installs, lookups, stats and refreshes, each over its own channel.

    Each worker owns its rule ids (``w<i>-r<k>``) and gives every install a new priority
    (its sequence number), so the test can tell exactly which install of an id landed.
    With ``strict`` every non-OK outcome is unexpected except NOT_FOUND for ids the
    worker never installed; a lookup of an acknowledged id must return the
    acknowledged priority (read your writes). Without it (shutdown tests) failures are
    only counted. Workers stop at :meth:`stop` or after ``max_seconds``.
    """

    def __init__(
        self,
        modules: types.SimpleNamespace,
        port: int,
        *,
        workers: int = 3,
        seed: int = 0,
        pool: int = 12,
        weights: Mapping[str, int] | None = None,
        strict: bool = True,
        call_timeout: float = 10.0,
        max_seconds: float = 600.0,
        anchors: Any = None,
    ) -> None:
        self._modules = modules
        self._port = port
        self._workers = workers
        self._seed = seed
        self._pool = pool
        self._weights = dict(
            weights
            or {"install": 3, "get": 6, "get_missing": 1, "stats": 2, "refresh": 1, "status": 1}
        )
        self._strict = strict
        self._call_timeout = call_timeout
        self._deadline = time.monotonic() + max_seconds
        self._anchors = (
            anchors if anchors is not None else anchors_payload(seed=seed, pb2=modules.pb2)
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self.report = LoadReport()

    def start(self) -> MixedLoad:
        for i in range(self._workers):
            thread = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, *, timeout: float = 60.0) -> LoadReport:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                pytest.fail(f"load worker {thread.name} did not stop within {timeout}s")
        if self._errors:
            raise self._errors[0]
        return self.report

    def __enter__(self) -> MixedLoad:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _record(self, method: str, outcome: Outcome, *, expected: Sequence[str] = ()) -> None:
        with self._lock:
            self.report.calls[(method, outcome.code.name)] += 1
            if self._strict and not outcome.ok and outcome.code.name not in expected:
                self.report.unexpected.append(f"{method}: {outcome.code.name} {outcome.details}")

    def _run(self, index: int) -> None:
        try:
            with DataPlaneClient(self._modules, self._port, own_connection=True) as client:
                self._loop(index, client)
        except BaseException as exc:  # surfaced by stop()
            self._errors.append(exc)

    def _loop(self, index: int, client: DataPlaneClient) -> None:
        pb2 = client.pb2
        rng = random.Random(self._seed * 1000 + index)
        ops = list(self._weights)
        weights = [self._weights[op] for op in ops]
        sequence = 0
        mine: dict[str, int] = {}  # this worker's acknowledged ids -> priority
        timeout = self._call_timeout
        while self._running():
            op = rng.choices(ops, weights)[0]
            if op == "install":
                sequence += 1
                ids = rng.sample([f"w{index}-r{k}" for k in range(self._pool)], rng.randint(1, 4))
                rules = [
                    pb_rule(pb2, rule_id, seed=sequence, anchors=self._anchors, priority=sequence)
                    for rule_id in ids
                ]
                with self._lock:
                    for rule_id in ids:
                        self.report.unacked.setdefault(rule_id, set()).add(sequence)
                request = pb2.InstallRulesRequest(agent_id=f"agent-{index}", rules=rules)
                outcome = client.outcome("InstallRules", request, deadline_s=timeout)
                self._record("InstallRules", outcome)
                if outcome.ok:
                    with self._lock:
                        for rule_id in ids:
                            self.report.acked[rule_id] = sequence
                            self.report.unacked[rule_id] = set()
                            mine[rule_id] = sequence
            elif op == "get" and mine:
                rule_id = rng.choice(sorted(mine))
                outcome = client.outcome(
                    "GetRule", pb2.GetRuleRequest(rule_id=rule_id), deadline_s=timeout
                )
                self._record("GetRule", outcome)
                if self._strict and outcome.ok and outcome.response.rule.priority != mine[rule_id]:
                    with self._lock:
                        self.report.unexpected.append(
                            f"GetRule {rule_id}: priority {outcome.response.rule.priority}, "
                            f"acknowledged {mine[rule_id]}"
                        )
            elif op == "get_missing":
                request = pb2.GetRuleRequest(rule_id=f"missing-{index}-{rng.randrange(1000)}")
                outcome = client.outcome("GetRule", request, deadline_s=timeout)
                self._record("GetRule", outcome, expected=("NOT_FOUND",))
            elif op == "stats":
                outcome = client.outcome(
                    "GetRuleStats", pb2.GetRuleStatsRequest(), deadline_s=timeout
                )
                self._record("GetRuleStats", outcome)
            elif op == "refresh":
                outcome = client.outcome(
                    "RefreshRules", pb2.RefreshRulesRequest(), deadline_s=timeout
                )
                self._record("RefreshRules", outcome)
            elif op == "status":
                request = pb2.GetRefreshStatusRequest()
                outcome = client.outcome("GetRefreshStatus", request, deadline_s=timeout)
                self._record("GetRefreshStatus", outcome)
            else:
                continue
            if not outcome.ok and outcome.code.name != "NOT_FOUND":
                time.sleep(0.01)  # a refusing server is not a reason to spin

    def check_store(self, stored: Mapping[str, Rule]) -> list[str]:
        """Problems with ``stored`` (read from disk): every acknowledged install must be
        there, with its priority or that of an install sent after it."""
        problems = []
        for rule_id, priority in sorted(self.report.acked.items()):
            rule = stored.get(rule_id)
            allowed = {priority} | self.report.unacked.get(rule_id, set())
            if rule is None:
                problems.append(f"acknowledged rule {rule_id!r} (priority {priority}) is missing")
            elif rule.priority not in allowed:
                problems.append(
                    f"rule {rule_id!r} has priority {rule.priority}; acknowledged {priority}, "
                    f"later attempts {sorted(allowed - {priority})}"
                )
        return problems


# ----------------------------------------------------------------------- stores ---


def full_anchors(seed: int) -> RuleAnchors:
    """A full anchor block: 16 seeded vectors in each of the four slots."""
    rng = np.random.default_rng(seed)
    slots = [rng.standard_normal((16, 32)).astype(np.float32).tolist() for _ in range(4)]
    return RuleAnchors.from_slots(slots, [16, 16, 16, 16])


def build_store(path: Path, count: int, *, prefix: str = "seed", families: int = 5) -> list[str]:
    """Write a warm store holding ``count`` global rules with full anchor blocks; their ids."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    anchors = full_anchors(1)
    rules = [
        Rule(
            rule_id=f"{prefix}-{i:05d}",
            family_id=f"fam-{i % families}",
            layer="L1",
            priority=i,
            created_at_ms=1_700_000_000_000 + i,
            anchors=anchors,
            policy_type=PolicyType.FORBIDDEN,
            drift_threshold=0.5,
            installed_by="seeder",
        )
        for i in range(count)
    ]
    store = WarmStore(path)
    try:
        store.write_snapshot_from(rules)
    finally:
        store.close()
    return [rule.rule_id for rule in rules]


def read_store(path: Path) -> dict[str, Rule]:
    """Every rule of the warm store at ``path``, loaded and verified as a restart would."""
    table = WarmStore(path).load()
    rules = {}
    for rule_id in table.ids():
        rule = table.rule(rule_id)
        assert rule is not None, rule_id
        rules[rule_id] = rule
    return rules


# ---------------------------------------------------------------------- metrics ---


def scrape_metrics(port: int, *, timeout: float = 10.0) -> dict[str, float]:
    """``GET /metrics`` (Prometheus text format) as {"name{labels}": value}."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{HOST}:{port}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def metric(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels``."""
    total = 0.0
    for series, value in samples.items():
        if series != name and not series.startswith(name + "{"):
            continue
        if all(f'{key}="{val}"' in series for key, val in labels.items()):
            total += value
    return total
