"""Smoke test of `python -m benchmarks transport --quick`: it runs and prints its figures.

The benchmark runs as a subprocess (it spawns its own server processes, and importing it
here would add its benchmark-only messages to this process's message table). Nothing
here asserts on speed: the figures only have to be there and be positive.
"""

from __future__ import annotations

from .runner import json_lines, run_benchmark

METRICS = {
    "bulk_mb_per_s",
    "round_trips_per_s_1_in_flight",
    "round_trips_per_s_32_in_flight",
}
# Generous: a quick run takes a few seconds; this only stops a hung run.
RUN_TIMEOUT = 120.0


def test_quick_run_prints_positive_figures_for_every_metric() -> None:
    """A quick run exits 0 and prints one JSON line per metric with positive figures."""
    result = run_benchmark("transport", "--quick", timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    references = [record for record in records if "reference" in record]
    records = [record for record in records if "reference" not in record]
    assert {record["metric"] for record in records} == METRICS, result.stdout
    assert len(records) == len(METRICS)
    # The trio floor: what the same machine does per round trip with no Noise or codec.
    assert [record["metric"] for record in references] == [
        "trio_floor_round_trips_per_s_1_in_flight"
    ]
    assert references[0]["reference"] > 0
    for record in records:
        assert record["benchmark"] == "transport"
        for key in ("freehold", "baseline", "ratio", "target"):
            value = record[key]
            assert isinstance(value, int | float) and not isinstance(value, bool), record
            assert value > 0, record
        assert record["quick"] is True
    # The readable table is there too, one row per metric with its verdict.
    rows = [line for line in result.stdout.splitlines() if line.endswith(("pass", "miss"))]
    assert len(rows) == len(METRICS), result.stdout


def test_unknown_benchmark_name_is_refused() -> None:
    """An unknown benchmark name is a usage error (exit 2), not a traceback."""
    result = run_benchmark("no-such-benchmark", timeout=RUN_TIMEOUT)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_help_lists_every_benchmark() -> None:
    """`--help` prints usage naming each benchmark (a "%" in a description once made
    argparse raise instead)."""
    result = run_benchmark("--help", timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for name in ("audit", "dht", "encoding", "network", "transport"):
        assert f"{name}:" in result.stdout
    assert "25% killed" in result.stdout
