"""Smoke test of `python -m benchmarks providers --quick`: it runs and prints each
figure beside the old way's, measured in the same run (the figures themselves are the
benchmark's to report, not a test's: this machine is shared)."""

from __future__ import annotations

from .runner import json_lines, run_benchmark


def test_quick_run_prints_each_figure_beside_the_old_way() -> None:
    result = run_benchmark("providers", "--quick", timeout=300.0)
    assert result.returncode == 0, result.stderr
    rows = {row["metric"]: row for row in json_lines(result.stdout)}
    for metric in ("bytes_per_record", "add_seconds", "stall_first", "stall_one_percent"):
        row = rows[metric]
        assert row["value"] > 0 and row["baseline"] > 0
        assert row["ratio"] == row["value"] / row["baseline"]
    # Memory is counted, not timed: fewer bytes a record than the old layout.
    assert rows["bytes_per_record"]["value"] < rows["bytes_per_record"]["baseline"]
