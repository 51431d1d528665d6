"""Smoke test of `python -m benchmarks audit --quick`: it runs and prints its figures.

It runs as a subprocess (it spawns a prover process of its own). Nothing here asserts
on speed: the figures only have to be there and be positive, and the slice-proof
alternative's BLAKE3 tree must be BLAKE3 (tests/benchmarks checks it below)."""

from __future__ import annotations

import os

import blake3

from benchmarks.blake3_tree import CHUNK_LEN, chunk_cv, parent_cv, root_hash, verify_path

from .runner import json_lines, run_benchmark

RUN_TIMEOUT = 300.0


def test_quick_run_prints_positive_figures() -> None:
    """A quick run exits 0 and prints wire bytes, the prover's rates, the judge's time,
    a check's traffic and the slice proof's costs, all positive."""
    result = run_benchmark("audit", "--quick", timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    records = {record["metric"]: record for record in json_lines(result.stdout)}
    assert set(records) == {
        "wire_bytes_per_chunk",
        "prover",
        "judge_us_per_chunk",
        "check_1gib",
        "blake3_slice_proof",
    }
    wire = records["wire_bytes_per_chunk"]
    assert 0 < wire["audit"] < wire["fetch"]
    for operation in ("audit", "fetch"):
        figures = records["prover"][operation]
        assert figures["count"] > 0 and figures["per_second"] > 0
    assert records["judge_us_per_chunk"]["value"] > 0
    assert records["check_1gib"]["bytes"] > 0 and records["check_1gib"]["segments"] == 64
    assert records["blake3_slice_proof"]["verify_ms"] > 0


def test_the_pure_python_tree_is_blake3() -> None:
    """Root hashes through the tree equal the blake3 package's at tree-shaping lengths,
    and a slice proof built from subtree values verifies (and fails when tampered)."""
    for size in (0, 1, 1023, 1024, 1025, 2048, 3 * CHUNK_LEN + 5, 8 * CHUNK_LEN + 1):
        data = os.urandom(size)
        assert root_hash(data) == blake3.blake3(data).digest(), size
    data = os.urandom(4 * CHUNK_LEN)
    leaves = [chunk_cv(data[i * CHUNK_LEN : (i + 1) * CHUNK_LEN], i) for i in range(4)]
    right_pair = parent_cv(leaves[2], leaves[3])
    root = blake3.blake3(data).digest()
    piece = data[CHUNK_LEN : 2 * CHUNK_LEN]
    assert verify_path(piece, 1, [(True, leaves[0]), (False, right_pair)], root)
    assert not verify_path(bytes(CHUNK_LEN), 1, [(True, leaves[0]), (False, right_pair)], root)
