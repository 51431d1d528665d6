"""Smoke test of `python -m benchmarks quota --quick`: it runs and prints its figures,
and the charge is not below what the disk holds by more than 10% for any kind."""

from __future__ import annotations

from .runner import json_lines, run_benchmark


def test_quick_run_prints_the_costs() -> None:
    result = run_benchmark("quota", "--quick", timeout=120.0)
    assert result.returncode == 0, result.stderr
    rows = [row for row in json_lines(result.stdout) if row["metric"] == "chunk_cost"]
    assert len(rows) == 5
    for row in rows:
        assert row["charged"] >= 4096
        if row["disk_bytes"] > 0:
            assert row["charged_over_disk"] >= 0.9, row
