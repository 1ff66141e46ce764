"""Process-wide allocator settings: each check runs in a fresh interpreter.

A fresh process so that the heap holds only what the check allocates, and so that
``mallopt`` settings do not leak into the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from guardrefresh.app._memory import _glibc

pytestmark = pytest.mark.skipif(
    _glibc() is None, reason="malloc_trim and mallopt are glibc's; this C library has neither"
)

# Many journal-segment-sized blocks; every tenth stays alive (pinning the heap's top and
# leaving holes), as the saw-tooth of segments freed by a compaction leaves them.
FRAGMENT_HEAP = """
import json, sys
from guardrefresh.app._memory import release_free_memory, tune_allocator

def rss_anon_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

if sys.argv[1] == "tuned":
    tune_allocator()
blocks = [bytearray(20 * 1024) for _ in range(2000)]
before = rss_anon_kib()
kept = blocks[::10]
del blocks
freed = rss_anon_kib()
released = release_free_memory()
print(json.dumps({"before": before, "freed": freed, "trimmed": rss_anon_kib(),
                  "released": released, "kept": len(kept)}))
"""


def fragment_heap(mode: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", FRAGMENT_HEAP, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("mode", ["default", "tuned"])
def test_released_holes_leave_the_resident_set(mode: str) -> None:
    # 2,000 blocks of 20 KiB: 40 MB; 36 MB of it freed, but in holes below live blocks.
    result = fragment_heap(mode)
    holes_kib = 1800 * 20
    # Without the trim the holes stay resident: free() gives back only the heap's top.
    assert result["before"] - result["freed"] < holes_kib / 4, result
    assert result["released"], result
    assert result["freed"] - result["trimmed"] > holes_kib * 3 / 4, result
