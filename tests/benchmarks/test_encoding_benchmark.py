"""Smoke test of `python -m benchmarks encoding --quick`: it runs and prints its figures.

The benchmark runs as a subprocess (it measures in processes of its own, one per malloc
setting). It passes whether or not pyeclib is installed and whether or not the C library
has mallopt: the run then says what it left out. The exception is Linux on x86-64 and
aarch64, where pyeclib (for its ISA-L) is a dependency: there the ISA-L rows must be
there too. Nothing here asserts on speed or on targets: the figures only have to be
there, for every row, and be positive.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from .runner import json_lines, run_benchmark

THREADS = (1, 2)
PIPELINES = {
    (metric, threads)
    for metric in ("encode", "decode_data", "decode_parity")
    for threads in THREADS
}
# Only where ISA-L loads (node/isal.py); the summary says whether it did.
ISAL_PIPELINES = {("encode_isal", threads) for threads in THREADS}
ISAL_STAGES = {("isal_encode", threads) for threads in THREADS}
TARGETED = {("encode", 1), ("encode", 2), ("decode_data", 1)}
STAGES = {
    (metric, threads)
    for metric in (
        "xchacha20poly1305_encrypt",
        "zfec_encode",
        "blake3_n_chunks",
        "blake3_k_chunks",
        "zfec_decode",
        "xchacha20poly1305_decrypt",
    )
    for threads in THREADS
}
BASELINE = {
    (metric, threads)
    for metric in ("erasure_encode", "erasure_decode_parity", "whole_encode")
    for threads in THREADS
}
QUICK_FILE_BYTES = 16 * 1024 * 1024
# Generous: a quick run takes a few seconds; this only stops a hung run.
RUN_TIMEOUT = 120.0


def _positive(record: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = record[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), record
        assert value > 0, record


def test_quick_run_prints_its_tables_and_a_json_line_per_figure() -> None:
    """A quick run exits 0 and prints its tables, then a JSON line for every pipeline
    row, stage and (when pyeclib is there) baseline figure of every malloc setting it
    measured, and one summary line."""
    result = run_benchmark("encoding", "--quick", timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    records = json_lines(result.stdout)
    assert all(record["benchmark"] == "encoding" for record in records)
    summaries = [record for record in records if record["kind"] == "summary"]
    assert len(summaries) == 1, result.stdout
    summary = summaries[0]
    assert summary["quick"] is True
    assert summary["file_bytes"] == QUICK_FILE_BYTES
    assert (summary["k"], summary["n"]) == (3, 10)
    settings = set(summary["malloc"])
    left_out = set(summary["malloc_unavailable"] or {})
    assert "default" in settings
    assert settings | left_out == {"default", "tuned"} and not settings & left_out
    if sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64"):
        assert summary["isal"] is True  # pyeclib, which bundles ISA-L, is a dependency here

    def figures(kind: str) -> dict[str, dict[tuple[str, int], dict[str, Any]]]:
        by_setting: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
        for record in records:
            if record["kind"] == kind:
                assert record["quick"] is True
                row = by_setting.setdefault(record["malloc"], {})
                row[record["metric"], record["threads"]] = record
        return by_setting

    pipelines = figures("pipeline")
    assert set(pipelines) == settings
    for rows in pipelines.values():
        assert set(rows) == PIPELINES | (ISAL_PIPELINES if summary["isal"] else set())
        for row, record in rows.items():
            _positive(
                record,
                "mb_per_s",
                "ideal_mb_per_s",
                "ratio_to_ideal",
                "slowest_stage_mb_per_s",
                "ratio_to_slowest",
            )
            assert record["slowest_stage"] in record["stages"]
            if row in TARGETED:
                _positive(record, "target_mb_per_s")
                assert isinstance(record["met"], bool)
            else:
                assert record["target_mb_per_s"] is None and record["met"] is None
    stages = figures("stage")
    assert set(stages) == settings
    for rows in stages.values():
        assert set(rows) == STAGES | (ISAL_STAGES if summary["isal"] else set())
        for record in rows.values():
            _positive(record, "mb_per_s", "processed_mb_per_s")
    baseline = figures("baseline")
    if summary["baseline_missing"] is None:
        assert summary["baseline"].startswith("pyeclib")
        assert set(baseline) == settings
        assert set(summary["pyeclib_wins_on_two_threads"]) == settings
        for rows in baseline.values():
            assert set(rows) == BASELINE
            for record in rows.values():
                _positive(record, "pyeclib_mb_per_s", "freehold_mb_per_s", "ratio")
        assert "pyeclib, default malloc, 2 threads: whole encode" in result.stdout
    else:
        assert summary["baseline"] is None and not baseline
        assert "baseline MISSING" in result.stdout
    # The readable tables come first: a verdict on each targeted row of each setting.
    verdicts = [line for line in result.stdout.splitlines() if line.endswith(("pass", "miss"))]
    assert len(verdicts) == len(TARGETED) * len(settings), result.stdout
    assert "slowest stage alone" in result.stdout
    assert "stage alone" in result.stdout
