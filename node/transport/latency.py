"""Round-trip times of our requests, per message type, in fixed buckets.

A node sends thousands of requests a second in a busy network, and a simulation runs
thousands of nodes in one process: so each observation is a bisect and two integer
additions, with no metrics library on the path. node/metrics.py exports the counts as
Prometheus histograms.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

__all__ = ["BUCKETS", "LatencyHistogram"]

# Upper bounds in seconds (Prometheus `le`), from a LAN's round trip to the default
# request timeout; the last bucket, +Inf, is implicit.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)


class LatencyHistogram:
    """Counts of answered requests by message type and bucket, and their sums."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        """Per message type: a count per bucket, the last for +Inf (not cumulative)."""
        self.sums: dict[str, float] = {}

    def observe(self, kind: str, seconds: float) -> None:
        counts = self.counts.get(kind)
        if counts is None:
            counts = self.counts[kind] = [0] * (len(BUCKETS) + 1)
            self.sums[kind] = 0.0
        counts[bisect_left(BUCKETS, seconds)] += 1
        self.sums[kind] += seconds
