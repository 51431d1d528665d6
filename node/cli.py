"""The `freehold` command line.

Every known error becomes one line on stderr and exit code 1, in `main()` only
(magic-wormhole's model); a user never sees a traceback for a user error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from node.errors import NodeError
from protocol.errors import ProtocolError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freehold",
        description="Freehold: peer-to-peer storage that nobody can read, seize or switch off.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="start two nodes on loopback; they handshake, ping each other and report",
    )
    demo.add_argument("--pings", type=int, default=5, help="pings each way (default 5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if arguments.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if arguments.command == "demo":
            from node.demo import run_demo

            if arguments.pings < 1:
                raise NodeError("--pings must be at least 1")
            trio.run(run_demo, arguments.pings)
    except (NodeError, ProtocolError, OSError) as exc:
        print(f"freehold: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("freehold: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
