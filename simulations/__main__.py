"""`python -m simulations NAME --nodes N --seed S [--out DIR] [--set KEY=VALUE ...]`.

Runs one scenario under trio's MockClock, prints its seed and summary table, and with
`--out` writes `<out>/<name>.json` and `<out>/<name>-*.png`. The process re-executes
itself once with PYTHONHASHSEED=0 (unless it is already set), so that two runs with
one seed print the same summary (simulations/harness.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
import trio.testing

from simulations.harness import collecting_rarely, memory_high_water_mib, seed_scheduler
from simulations.scenario import Scenario, ScenarioOptions, write_json, write_plots

__all__ = ["SCENARIOS", "main", "run_scenario"]


def _scenarios() -> dict[str, tuple[Scenario, str]]:
    from simulations.scenarios.abuse import run_abuse
    from simulations.scenarios.churn import run_churn
    from simulations.scenarios.durability import run_durability
    from simulations.scenarios.eclipse import run_eclipse
    from simulations.scenarios.failure import run_failure
    from simulations.scenarios.files import run_files
    from simulations.scenarios.lookup import run_lookup

    return {
        "lookup": (run_lookup, "hops, RPCs, latency and exactness of lookups as N grows"),
        "churn": (run_churn, "provider lookups and routing health under session churn"),
        "failure": (run_failure, "a fraction of nodes fails at once: success and recovery"),
        "files": (run_files, "files put, nodes churn: share still readable after a day, a week"),
        "eclipse": (run_eclipse, "Sybils answer lookups with each other only"),
        "durability": (run_durability, "a year of churn: files kept by repair, and its cost"),
        "abuse": (run_abuse, "an attacker in one /24 tries to fill the disks: quotas, expiry"),
    }


SCENARIOS = ("lookup", "churn", "failure", "files", "eclipse", "durability", "abuse")


def run_scenario(name: str, options: ScenarioOptions) -> Any:
    """Run scenario `name` in a fresh trio run under MockClock; its ScenarioResult."""
    scenario, _ = _scenarios()[name]
    seed_scheduler(options.seed)
    with collecting_rarely():
        result = trio.run(scenario, options, clock=trio.testing.MockClock(autojump_threshold=0))
    result.peak_memory_mib = max(result.peak_memory_mib, memory_high_water_mib())
    return result


def _parameter(text: str) -> tuple[str, Any]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulations",
        description="Run real Freehold nodes on an in-memory network in virtual time.",
    )
    parser.add_argument("name", choices=SCENARIOS)
    parser.add_argument("--nodes", type=int, default=100, help="network size (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="the seed (default 1)")
    parser.add_argument("--out", type=Path, help="write <name>.json and plots here")
    parser.add_argument(
        "--set",
        dest="parameters",
        type=_parameter,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a scenario parameter (see simulations/README.md)",
    )
    parser.add_argument("--quick", action="store_true", help="the small version the tests run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0" and argv is None:
        environment = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "simulations", *sys.argv[1:]], environment)
    if arguments.nodes < 2:
        print("simulations: --nodes must be at least 2", file=sys.stderr)
        return 2
    options = ScenarioOptions(
        arguments.nodes, arguments.seed, dict(arguments.parameters), arguments.quick
    )
    print(f"scenario {arguments.name}, {arguments.nodes} nodes, seed {arguments.seed}", flush=True)
    result = run_scenario(arguments.name, options)
    print(result.summary_text(), end="")
    print(
        f"wall time {result.wall_seconds:.1f} s, peak memory {result.peak_memory_mib:.0f} MiB, "
        f"seed {result.seed}"
    )
    if arguments.out is not None:
        print(f"wrote {write_json(result, arguments.out)}")
        for path in write_plots(result, arguments.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
