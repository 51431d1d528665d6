"""Freehold benchmarks: `python -m benchmarks NAME` prints figures beside a baseline.

Each benchmark measures Freehold and a plain baseline in the same run, on the same
machine, and prints a readable table followed by one JSON object per line. A benchmark
is a measurement, not a test: it exits 0 whether or not its targets are met.

Benchmark-only messages use type codes in `BENCHMARK_TYPE_CODES` (0xB0..0xBF). They
are registered in the protocol's message table only when a benchmark module is
imported, so a node never answers them; the range is kept free of protocol messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["BENCHMARK_TYPE_CODES", "BenchmarkError", "BenchmarkOptions"]

BENCHMARK_TYPE_CODES: Final = range(0xB0, 0xC0)
"""Message type codes reserved for benchmark-only messages."""


@dataclass(frozen=True, slots=True)
class BenchmarkOptions:
    """What the command line asked of a benchmark."""

    # Short measurements for a smoke run: the figures are rough.
    quick: bool = False
    # Run the measured client (and the server, where the benchmark has one) under
    # cProfile and print where their time goes; the profiler skews the figures.
    profile: bool = False


class BenchmarkError(Exception):
    """A benchmark could not measure (a server died, a peer answered wrongly)."""
