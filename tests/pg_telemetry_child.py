"""Child process of the fleet telemetry tests: one replica's telemetry store, recording.

Usage: ``python pg_telemetry_child.py DSN PREFIX COUNT``.

Opens the PostgreSQL telemetry store on ``DSN`` (as a replica in fleet mode does),
records ``COUNT`` sessions ``PREFIX-0`` ... (agent ``PREFIX``) over about half a second,
in small bursts so two children write at the same time, leaves the store (which writes
what is queued) and prints ``DONE <recorded> <dropped>``. Bounded: gives up after
``MAX_SECONDS``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import trio
import trio_asyncio
from telemetry_support import engine_settings, make_session

from guardrefresh.replication import open_engine
from guardrefresh.telemetry import open_telemetry

MAX_SECONDS = 30.0
BURSTS = 20


async def main(dsn: str, prefix: str, count: int) -> None:
    now_ms = int(time.time() * 1000)
    with trio.fail_after(MAX_SECONDS):
        async with (
            trio_asyncio.open_loop(),
            open_engine(engine_settings(dsn)) as engine,
            open_telemetry(Path("unused"), engine=engine, batch_window_s=0.02) as store,
        ):
            for i in range(count):
                session = make_session(f"{prefix}-{i}", agent=prefix, timestamp_ms=now_ms + i)
                assert store.record(session)
                if i % max(1, count // BURSTS) == 0:
                    await trio.sleep(0.025)
        stats = store.stats()
    sys.stdout.write(f"DONE {stats.recorded} {stats.dropped}\n")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
