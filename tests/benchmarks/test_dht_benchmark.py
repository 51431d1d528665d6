"""Smoke test of `python -m benchmarks dht --quick`: it runs and prints its figures.

The benchmark runs as a subprocess (it starts many nodes on loopback and may spawn the
kademlia baseline's process). It passes whether or not `kademlia` is installed: without
it the baseline's columns are empty and the run says so. Nothing here asserts on speed
or on targets: the Freehold figures only have to be there and be plausible.
"""

from __future__ import annotations

import random

from benchmarks import dht
from node.transport import TransportConfig

from .runner import json_lines, run_benchmark

PHASES = {"healthy", "killed"}
# Figures that must be positive in every phase they appear in; shares are in 0..100.
POSITIVE_METRICS = {
    "find_node_p50_ms",
    "find_node_rpcs",
    "provide_mean_ms",
    "provide_p50_ms",
    "provide_p99_ms",
    "provide_rpcs",
    "find_providers_mean_ms",
    "find_providers_p50_ms",
    "find_providers_p99_ms",
    "find_providers_rpcs",
}
SHARE_METRICS = {"find_node_exact_pct", "provide_accepted_pct", "find_providers_found_pct"}
# Counts that are 0 where every node already knows every other (N = 20 after bootstrap).
COUNT_METRICS = {
    "find_node_new_connections",
    "provide_new_connections",
    "find_providers_new_connections",
    "provide_crypto_floor_p50_ms",
    "find_providers_crypto_floor_p50_ms",
}
# Generous: a quick run takes well under a minute; this only stops a hung run.
RUN_TIMEOUT = 300.0


def test_quick_run_prints_plausible_freehold_figures() -> None:
    """A quick run exits 0 and prints, for N = 20 and both phases, every Freehold metric
    as a JSON line with a positive figure (shares within 0..100)."""
    result = run_benchmark("dht", "--quick", timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    summaries = [record for record in records if "metric" not in record]
    metrics = [record for record in records if "metric" in record]
    assert len(summaries) == 1, result.stdout
    summary = summaries[0]
    assert summary["benchmark"] == "dht"
    assert summary["sizes"] == [20]
    # Either the baseline ran, or the run says why not.
    assert (summary["baseline"] is None) != (summary["baseline_missing"] is None), summary
    seen = set()
    for record in metrics:
        assert record["benchmark"] == "dht"
        assert record["nodes"] == 20
        assert record["phase"] in PHASES
        assert record["quick"] is True
        value = record["freehold"]
        assert isinstance(value, int | float) and not isinstance(value, bool), record
        if record["metric"] in SHARE_METRICS:
            assert 0 <= value <= 100, record
        elif record["metric"] in COUNT_METRICS:
            assert value >= 0, record
            assert record["kademlia"] is None, record  # Freehold only
        else:
            assert value > 0, record
        seen.add((record["phase"], record["metric"]))
    everywhere = POSITIVE_METRICS | SHARE_METRICS | COUNT_METRICS
    expected = {(phase, metric) for phase in PHASES for metric in everywhere}
    expected.add(("healthy", "bootstrap_s"))
    assert seen == expected, result.stdout
    # The readable table is printed before the JSON lines.
    assert "find_providers p50" in result.stdout
    assert "one handshake's public-key CPU, both ends (" in result.stdout
    assert "Traceback" not in result.stderr


async def test_new_connections_are_counted_for_the_operation_that_opened_them() -> None:
    """Every connection the benchmark counts towards an operation is one the transports
    opened (30 real nodes on loopback, one operation at a time), and the floor is the
    p50 of connections x handshake cost."""
    async with dht._open_freehold_swarm(30, 7, TransportConfig()) as swarm:
        rng = random.Random(7)
        await dht._bootstrap(swarm, 30, rng)

        def opened() -> int:
            return sum(node.transport.statistics().connections_outbound for node in swarm.nodes)

        before = opened()
        figures = await dht._measure_phase(swarm, rng, 10, None)
        dials = figures.find_node_dials + figures.provide_dials + figures.find_providers_dials
        assert len(dials) == 30
        assert 0 < sum(dials) <= opened() - before
    figures.handshake_crypto_seconds = 0.001
    assert dht._crypto_floor(figures, [0, 2, 4]) == 2.0
    assert dht._dials(figures, [1, 2]) == 1.5
    figures.handshake_crypto_seconds = None  # kademlia's figures: no row
    assert dht._crypto_floor(figures, [1]) is None and dht._dials(figures, [1]) is None
