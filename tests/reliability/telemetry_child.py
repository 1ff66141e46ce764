"""Child process of ``test_telemetry_crash``: records sessions as fast as it can.

Usage: ``python telemetry_child.py DB PREFIX BATCH_WINDOW_S``.

It opens the telemetry store at ``DB`` with :func:`guardrefresh.telemetry.open_telemetry`
(as the service does) and records sessions ``PREFIX-0``, ``PREFIX-1``, ... in order; a
session the full queue refuses is offered again, so the queue holds a gap-free prefix
and the writer commits them in that order. Lines on stdout, flushed:

    READY              the store is open, recording starts
    C <n>              the writer has committed n sessions (all of PREFIX-0 .. n-1)
    FLUSHED <n>        after SIGTERM: every one of the n recorded sessions is written

The parent SIGKILLs it (crash test) or sends SIGTERM (flush test). Bounded: it stops
by itself after ``MAX_SECONDS``.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio

from guardrefresh.telemetry import Durations, EnforcementSession, open_telemetry

MAX_SECONDS = 30.0
#: Sessions recorded between two yields to the writer thread and the reporter.
BURST = 50


def _session(prefix: str, i: int) -> EnforcementSession:
    return EnforcementSession.from_outcome(
        session_id=f"{prefix}-{i}",
        intent_json=f'{{"id": "{prefix}-{i}", "tool_name": "web_search", "tenant_id": "t{i % 5}"}}',
        tenant_id=f"t{i % 5}",
        agent_id=f"a{i % 7}",
        layer="L4",
        durations=Durations(total_us=1000 + i % 100),
        intent_summary="web_search",
    )


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(db: Path, prefix: str, window: float) -> None:
    recorded = 0
    with trio.move_on_after(MAX_SECONDS), trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with open_telemetry(db, batch_window_s=window) as telemetry:
            _say("READY")
            async with trio.open_nursery() as nursery:

                async def record() -> None:
                    nonlocal recorded
                    while True:
                        for _ in range(BURST):
                            if not telemetry.record(_session(prefix, recorded)):
                                break  # the queue is full: offer it again after a pause
                            recorded += 1
                        await trio.sleep(0.001)

                async def report() -> None:
                    reported = -1
                    while True:
                        committed = telemetry.stats().recorded
                        if committed != reported:
                            _say(f"C {committed}")
                            reported = committed
                        await trio.sleep(0.005)

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(record)
                nursery.start_soon(report)
                nursery.start_soon(stop_on_signal)
        # Leaving open_telemetry has written everything recorded.
        _say(f"FLUSHED {recorded}")


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]))
