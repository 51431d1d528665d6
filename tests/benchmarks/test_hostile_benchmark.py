"""Smoke test of `python -m benchmarks hostile --quick`: it runs against a real node
process and prints its figures; no throwaway identity is served, and the honest
newcomer is answered after every attack (the RSS figures are the benchmark's to
report, not a test's: this machine is shared)."""

from __future__ import annotations

from .runner import json_lines, run_benchmark


def test_quick_run_prints_the_figures() -> None:
    result = run_benchmark("hostile", "--quick", timeout=300.0)
    assert result.returncode == 0, result.stderr
    [row] = [row for row in json_lines(result.stdout) if row.get("benchmark") == "hostile"]
    assert row["identities"]["served"] == 0
    assert row["identities"]["refused"] == row["identities"]["tried"]
    for attack in ("identities", "partial_frames", "unread_answers"):
        assert row[attack]["rss_mib"] > 0
        assert row[attack]["newcomer_s"] < 10
    assert row["peak_mib"] >= row["idle_mib"] > 0
