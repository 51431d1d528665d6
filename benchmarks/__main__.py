"""`python -m benchmarks NAME [--quick] [--profile]`: run one benchmark by name.

The names are an explicit table; each entry runs one benchmark module and prints its
table and JSON lines. The exit status is 0 whether or not targets are met, and 1 (with
one line on stderr) if a benchmark could not measure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from benchmarks import BenchmarkError, BenchmarkOptions
from benchmarks.audit import run_audit_benchmark
from benchmarks.dht import run_dht_benchmark
from benchmarks.encoding import run_encoding_benchmark
from benchmarks.hostile import run_hostile_benchmark
from benchmarks.network import run_network_benchmark
from benchmarks.providers import run_providers_benchmark
from benchmarks.quota import run_quota_benchmark
from benchmarks.transport import run_transport_benchmark

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS: dict[str, tuple[Callable[[BenchmarkOptions], None], str]] = {
    "audit": (
        run_audit_benchmark,
        "audits vs fetching whole chunks: wire bytes, prover rate and CPU, a 1 GiB check",
    ),
    "dht": (
        run_dht_benchmark,
        "N Freehold DHT nodes on TCP loopback vs bmuller/kademlia, healthy and 25% killed",
    ),
    "encoding": (
        run_encoding_benchmark,
        "encode and decode 256 MiB on 1 and 2 threads beside each stage alone, and pyeclib",
    ),
    "hostile": (
        run_hostile_benchmark,
        "a real node's RSS under throwaway identities, partial frames and unread answers",
    ),
    "network": (
        run_network_benchmark,
        "put and get through a 10-node testnet of real processes, RSS and idle CPU",
    ),
    "providers": (
        run_providers_benchmark,
        "provider records: bytes each, time to add, event-loop stall of saving, vs before",
    ),
    "quota": (
        run_quota_benchmark,
        "a chunk's real cost on disk vs its quota charge, and vs counting bytes alone",
    ),
    "transport": (
        run_transport_benchmark,
        "Noise-over-TCP RPC between two processes vs plain blocking sockets",
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run a Freehold benchmark and print its figures beside a baseline.",
    )
    parser.add_argument(
        "name",
        choices=sorted(BENCHMARKS),
        # argparse %-formats help strings, and the descriptions say "25% killed".
        help="; ".join(
            f"{name}: {text}".replace("%", "%%") for name, (_, text) in sorted(BENCHMARKS.items())
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="short measurements for a smoke run (rough figures)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the measured client with cProfile (skews the figures)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    run, _ = BENCHMARKS[arguments.name]
    try:
        run(BenchmarkOptions(quick=arguments.quick, profile=arguments.profile))
    except BenchmarkError as exc:
        print(f"benchmark {arguments.name} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
