"""Child process of ``test_crash_writes``: writes to a warm store until it is killed.

Usage: ``python writer_child.py STORE SEED FIRST_OP``, or ``python writer_child.py
--fork-server`` (see :func:`_serve`: the test uses it, to start a hundred writers
without paying Python's start-up a hundred times).

It opens ``STORE`` with :class:`guardrefresh.bridge.Bridge` (as the service does) and
runs operations ``FIRST_OP, FIRST_OP + 1, ...`` of the deterministic sequence
:func:`operation` gives for ``SEED``: installs of a batch of rules with full anchor
blocks, and every fourth one the removal of all rules of an agent. After each write it
compacts when the journal has grown enough, as the service's background task does.
The parent SIGKILLs it at a moment of its choosing. One line per step on stdout,
written and flushed before (``B``, ``C``) or after (``A``, ``CD``) the step::

    READY <first op>   the store is open
    B <n>              operation n begins
    A <n>              operation n returned: durable, acknowledged
    C <n>              a compaction begins (after operation n)
    CD <n>             the compaction is done
    DONE               stopped by its own bounds (the parent kills it long before)

The parent imports :func:`operation` and :func:`apply` to know what the store must hold.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

import attrs
import numpy as np

from guardrefresh.model import PolicyType, Rule, RuleAnchors

AGENTS = ("ag0", "ag1", "ag2", "ag3")
#: Bounds of one child's life; the parent kills it within a few seconds.
MAX_OPS = 3000
MAX_SECONDS = 60.0


@attrs.frozen
class Operation:
    """One write: ``install`` of ``rules`` for ``agent``, or ``remove`` of all its rules."""

    index: int
    kind: str
    agent: str
    rules: tuple[Rule, ...] = ()


@functools.cache
def _anchors(variant: int) -> RuleAnchors:
    rng = np.random.default_rng(1000 + variant)
    slots = [rng.standard_normal((16, 32)).astype(np.float32).tolist() for _ in range(4)]
    return RuleAnchors.from_slots(slots, [16, 16, 16, 16])


def _rule(rule_id: str, op: int, j: int) -> Rule:
    return Rule(
        rule_id=rule_id,
        family_id=f"fam{j % 3}",
        layer="L1",
        priority=op,
        enabled=j % 2 == 0,
        created_at_ms=1_700_000_000_000 + op,
        params={"op": op, "j": j},
        anchors=_anchors((op + j) % 8),
        policy_type=PolicyType.FORBIDDEN,
        drift_threshold=0.25,
    )


def operation(seed: int, index: int) -> Operation:
    """Operation ``index`` of the sequence of ``seed`` (pure: parent and child agree).

    An install carries 1-24 new rules (8 KiB of anchors each) plus an upsert of the
    agent's counter rule, whose priority records the operation that wrote it last.
    """
    if index % 4 == 3:
        return Operation(index, "remove", AGENTS[(index // 4) % len(AGENTS)])
    agent = AGENTS[index % len(AGENTS)]
    size = random.Random(seed * 1_000_003 + index).randint(1, 24)
    rules = [_rule(f"{agent}-op{index}-{j}", index, j) for j in range(size)]
    rules.append(_rule(f"counter-{agent}", index, 0))
    return Operation(index, "install", agent, tuple(rules))


def apply(state: Mapping[str, Rule], op: Operation) -> dict[str, Rule]:
    """The rules stored after ``op`` is applied to ``state`` (as the bridge stamps them)."""
    out = dict(state)
    if op.kind == "install":
        for rule in op.rules:
            out[rule.rule_id] = attrs.evolve(rule, installed_by=op.agent)
    else:
        for rule_id in [
            k for k, rule in out.items() if op.agent in (rule.installed_by, rule.agent_id)
        ]:
            del out[rule_id]
    return out


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _main(store: Path, seed: int, first: int) -> None:
    from guardrefresh.bridge import Bridge

    bridge = await Bridge.open(store, make_dirs=True)
    try:
        _say(f"READY {first}")
        deadline = time.monotonic() + MAX_SECONDS
        for index in range(first, first + MAX_OPS):
            if time.monotonic() > deadline:
                break
            op = operation(seed, index)
            _say(f"B {index}")
            if op.kind == "install":
                await bridge.install_rules(op.agent, op.rules)
            else:
                await bridge.remove_agent_rules(op.agent)
            _say(f"A {index}")
            if bridge.store.needs_compaction():
                _say(f"C {index}")
                await bridge.compact_if_needed()
                _say(f"CD {index}")
        _say("DONE")
    finally:
        bridge.close()


def _serve() -> None:
    """Fork server: one writer at a time, forked from a process that imported everything.

    Commands on stdin: ``RUN STORE SEED FIRST_OP`` forks a writer, whose lines go to
    the shared stdout (this process is silent meanwhile), and answers ``PID <pid>``;
    when the writer has ended, ``EXITED <pid> <si_code> <si_status>``. The writer is
    left a zombie until the next line on stdin (``REAP``): until then its pid cannot be
    reused, so the parent's SIGKILL can never reach another process. EOF ends it.
    """
    import trio

    from guardrefresh.bridge import Bridge  # noqa: F401  # imported once, before any fork

    while line := sys.stdin.readline():
        command = line.split()
        if not command or command[0] != "RUN":
            continue
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                trio.run(_main, Path(command[1]), int(command[2]), int(command[3]))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code)
        _say(f"PID {pid}")
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        assert info is not None
        _say(f"EXITED {pid} {info.si_code} {info.si_status}")
        sys.stdin.readline()
        os.waitpid(pid, 0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--fork-server"]:
        _serve()
    else:
        import trio

        trio.run(_main, Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
