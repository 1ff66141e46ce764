"""What a session writer did (committed, dropped, pruned, commit times), for metrics."""

from __future__ import annotations

from typing import Final

__all__ = ["COMMIT_BUCKETS", "WriterCounters"]

#: Upper bounds (seconds) of the batch commit duration histogram.
COMMIT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class WriterCounters:
    """What the writer did; written by its thread only, read by anyone (metrics)."""

    def __init__(self) -> None:
        self.committed = 0
        self.dropped = 0
        self.pruned = 0
        self.database_bytes = 0
        #: Per bucket of :data:`COMMIT_BUCKETS`, plus one for larger: not cumulative.
        self.commit_counts = [0] * (len(COMMIT_BUCKETS) + 1)
        self.commit_seconds = 0.0
        self.healthy = True

    def observe_commit(self, seconds: float) -> None:
        index = len(COMMIT_BUCKETS)
        for i, bound in enumerate(COMMIT_BUCKETS):
            if seconds <= bound:
                index = i
                break
        self.commit_counts[index] += 1
        self.commit_seconds += seconds
