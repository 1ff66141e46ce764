"""Crash safety: SIGKILL a writing process at 100 random moments; nothing acknowledged is lost.

A child process (``writer_child.py``) writes to a warm store through
:class:`guardrefresh.bridge.Bridge` (installs of 1-25 rules with full 8 KiB anchor
blocks, removals of every rule of an agent, and compactions whenever the journal has
grown past the threshold) and prints one line per acknowledged write. The parent kills
it with SIGKILL at a seeded random moment, chosen three ways so the kills spread over
every phase of the commit protocol:

- ``time``: at a uniformly random moment of its first 0.4 s of writing;
- ``write``: a random 0-6 ms after operation n began (n random): inside the journal
  append, its fdatasync, the manifest's temp file, rename or directory fsync;
- ``compaction``: a random 0-20 ms after a compaction began: while the new snapshot
  and journal are written, at the manifest switch, or while old files are removed.

After each kill a fresh ``WarmStore(path).load()`` must succeed and hold exactly the
rule set after the acknowledged operations, or after one more when an operation was
in flight (never part of one): every rule compared field by field, anchors included.
The next child then continues on the same store (recovery after a crash is part of
what is tested), in four series of 25 kills, two series at a time.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import attrs
from support.service import service_env

from guardrefresh.model import Rule
from guardrefresh.storage import WarmStore

from .writer_child import apply, operation

CHILD = Path(__file__).with_name("writer_child.py")
SERIES = 4
KILLS_PER_SERIES = 25
PARALLEL_SERIES = 2
START_TIMEOUT_S = 30.0
#: A kill whose trigger has not come this long after READY happens anyway.
TRIGGER_TIMEOUT_S = 5.0
_TMP = re.compile(r"^\..*\.tmp-\d+$")
_GENERATION = re.compile(r"\.(\d{8})\.(snap|journal)$")


@attrs.frozen
class Kill:
    """One kill and what it left behind."""

    mode: str
    #: ``between`` writes, ``write`` (an operation began, not acknowledged) or ``compaction``.
    phase: str
    acked: int
    in_flight_landed: bool
    uncommitted_tail: bool
    #: Temp files (``.<name>.tmp-<pid>``) this kill left behind; nothing ever removes them.
    new_temp_files: int
    generations: int


class _Run:
    """One writer: its lines, and the kill armed for it.

    Armed before the writer starts: the trigger may be the line right after READY.
    """

    def __init__(self, trigger: re.Pattern[str] | None, delay: float) -> None:
        self.trigger = trigger
        self.delay = delay
        self.lines: list[str] = []
        self.pid = 0
        self.exit_status = ""
        self.started = threading.Event()
        self.ready = threading.Event()
        self.killed = threading.Event()
        self.exited = threading.Event()
        self._lock = threading.Lock()

    def kill(self) -> None:
        if not self.started.wait(START_TIMEOUT_S):
            raise AssertionError("the fork server never reported the writer's pid")
        with self._lock:
            if not self.killed.is_set():
                # Safe: the fork server keeps the writer unreaped until we say REAP.
                os.kill(self.pid, signal.SIGKILL)
                self.killed.set()

    def line(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith("READY"):
            self.ready.set()
        if self.trigger is not None and self.trigger.fullmatch(line):
            self.trigger = None
            time.sleep(self.delay)
            self.kill()


class _WriterServer:
    """``writer_child.py --fork-server``: starts writers in milliseconds, one at a time."""

    def __init__(self, stderr: object) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), "--fork-server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,  # type: ignore[arg-type]
            env=service_env(),
        )
        self._run: _Run | None = None
        self._reader = threading.Thread(target=self._read, name="writer-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode().strip()
            run = self._run
            if run is None or not line:
                continue
            if line.startswith("PID "):
                run.pid = int(line.split()[1])
                run.started.set()
            elif line.startswith("EXITED "):
                run.exit_status = line
                run.exited.set()
            else:
                run.line(line)
        if self._run is not None:
            self._run.exited.set()

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def start(self, store: Path, seed: int, first: int, run: _Run) -> None:
        self._run = run
        self._send(f"RUN {store} {seed} {first}")

    def finish(self, run: _Run) -> str:
        """Kill the writer (if not yet), wait for its end, let it be reaped; its exit status."""
        run.kill()
        if not run.exited.wait(START_TIMEOUT_S):
            raise AssertionError(f"writer {run.pid} did not end after SIGKILL")
        self._send("REAP")
        return run.exit_status

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # EOF: the server exits
        try:
            self.process.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(START_TIMEOUT_S)
        self._reader.join(START_TIMEOUT_S)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _disk_evidence(store: Path) -> tuple[bool, frozenset[str], int]:
    """(uncommitted journal tail?, temp files present, generations present) after a kill."""
    manifest = WarmStore(store).read_manifest()
    journal = WarmStore(store).journal_path(manifest.generation)
    tail = journal.stat().st_size > manifest.journal_size
    names = [entry.name for entry in store.parent.iterdir()]
    temps = frozenset(name for name in names if _TMP.match(name))
    generations = {m[1] for name in names if (m := _GENERATION.search(name))}
    return tail, temps, len(generations)


def _mismatch(stored: Mapping[str, Rule], expected: Mapping[str, Rule]) -> str:
    missing = sorted(expected.keys() - stored.keys())
    extra = sorted(stored.keys() - expected.keys())
    changed = sorted(k for k in expected.keys() & stored.keys() if stored[k] != expected[k])
    return f"missing {missing[:5]} ({len(missing)}), extra {extra[:5]} ({len(extra)}), changed {changed[:5]} ({len(changed)})"


def _run_series(workdir: Path, seed: int) -> list[Kill]:
    rng = random.Random(seed)
    store = workdir / "data" / "warm_storage.bin"
    state: dict[str, Rule] = {}
    applied = 0
    temps: frozenset[str] = frozenset()
    kills: list[Kill] = []
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "children.log").open("ab") as stderr:
        server = _WriterServer(stderr)
        try:
            for k in range(KILLS_PER_SERIES):
                mode = ("time", "write", "compaction")[k % 3]
                trigger = None
                if mode == "write":
                    trigger = re.compile(f"B {applied + rng.randint(0, 40)}")
                elif mode == "compaction":
                    trigger = re.compile(r"C \d+")
                delay = rng.uniform(0, 0.006 if mode == "write" else 0.02)
                run = _Run(trigger, delay)
                server.start(store, seed, applied, run)
                try:
                    assert run.ready.wait(START_TIMEOUT_S), f"writer not ready: {run.lines}"
                    if mode == "time":
                        run.killed.wait(rng.uniform(0, 0.4))
                    elif not run.killed.wait(TRIGGER_TIMEOUT_S):
                        mode = "fallback"
                finally:
                    status = server.finish(run)
                assert status == f"EXITED {run.pid} {os.CLD_KILLED} {signal.SIGKILL.value}", (
                    f"writer ended otherwise ({status}); see {workdir / 'children.log'}"
                )
                state, applied, kill = _check(store, seed, state, applied, mode, run.lines, temps)
                kills.append(kill)
                temps = _disk_evidence(store)[1]
        finally:
            server.close()
    return kills


def _check(
    store: Path,
    seed: int,
    state: dict[str, Rule],
    applied: int,
    mode: str,
    lines: list[str],
    old_temps: frozenset[str],
) -> tuple[dict[str, Rule], int, Kill]:
    """Verify the store after a kill; the model's new state and operation count, and the record.

    ``state`` is what the store held after ``applied`` operations, where this writer began.
    """
    acks = [int(line.split()[1]) for line in lines if line.startswith("A ")]
    assert acks == list(range(applied, applied + len(acks))), lines[-5:]
    acked = applied + len(acks)
    last = lines[-1]
    phase = {"B": "write", "C": "compaction"}.get(last.split()[0], "between")
    for index in range(applied, acked):
        state = apply(state, operation(seed, index))
    tail, temps, generations = _disk_evidence(store)

    table = WarmStore(store).load()
    rules = {rule_id: table.rule(rule_id) for rule_id in table.ids()}
    landed = False
    if rules != state:
        after = apply(state, operation(seed, acked)) if phase == "write" else None
        assert after is not None and rules == after, (
            f"seed {seed}, {mode} kill after {last!r}: the store holds neither the acknowledged "
            f"rule set nor the one after the operation in flight: {_mismatch(rules, state)}"
        )
        landed = True
        state = after
        acked += 1
    kill = Kill(mode, phase, len(acks), landed, tail, len(temps - old_temps), generations)
    return state, acked, kill


def test_sigkill_during_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_SERIES) as pool:
        futures = [
            pool.submit(_run_series, tmp_path / f"series-{seed}", seed) for seed in range(SERIES)
        ]
        kills = [kill for future in futures for kill in future.result()]

    assert len(kills) == SERIES * KILLS_PER_SERIES == 100
    phases = Counter(kill.phase for kill in kills)
    writes = [kill for kill in kills if kill.phase == "write"]
    compactions = [kill for kill in kills if kill.phase == "compaction"]
    summary = {
        "kills": len(kills),
        "modes": dict(Counter(kill.mode for kill in kills)),
        "acknowledged writes": sum(kill.acked for kill in kills),
        "between writes": phases["between"],
        "in a write": len(writes),
        "- journal appended, manifest not replaced": sum(k.uncommitted_tail for k in writes),
        "- manifest temp file written, not renamed": sum(bool(k.new_temp_files) for k in writes),
        "- committed, not yet acknowledged": sum(k.in_flight_landed for k in writes),
        "in a compaction": len(compactions),
        "- two generations on disk": sum(k.generations > 1 for k in compactions),
        "- temp file left": sum(bool(k.new_temp_files) for k in compactions),
        "temp files left behind": sum(kill.new_temp_files for kill in kills),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"crash-writes evidence: {summary}")
    # The kills must really have hit the protocol's windows, or the test proves little.
    assert phases["write"] >= 15, summary
    assert phases["compaction"] >= 3, summary
    assert summary["- journal appended, manifest not replaced"] >= 1, summary
