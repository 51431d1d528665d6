"""Run `python -m benchmarks ...` as a subprocess and read its JSON lines (shared by the
benchmark smoke tests; nothing here asserts on speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


def run_benchmark(*arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the benchmark command with `arguments`; `timeout` only stops a hung run."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of `output` that is a JSON object, parsed."""
    records = []
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            assert isinstance(record, dict)
            records.append(record)
    return records
