"""DESIGN.md#errors: one exception hierarchy per package, and no two exception classes
of one name anywhere (so that a name in a log line or a traceback means one thing)."""

from __future__ import annotations

import importlib
import inspect
from collections import defaultdict
from pathlib import Path

import pytest

from dht.errors import DhtError
from node.errors import NodeError
from protocol.errors import ProtocolError

ROOT = Path(__file__).resolve().parent.parent
BASES: dict[str, type[BaseException]] = {
    "protocol": ProtocolError,
    "dht": DhtError,
    "node": NodeError,
}


def modules(package: str) -> list[str]:
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def exceptions_defined_in(package: str) -> list[type[BaseException]]:
    found = []
    for name in modules(package):
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == name:
                found.append(value)
    return found


@pytest.mark.parametrize("package", sorted(BASES))
def test_every_public_exception_is_in_its_packages_hierarchy(package: str) -> None:
    """Every exception a package defines (private control-flow sentinels aside)
    subclasses that package's one base: ProtocolError, DhtError or NodeError."""
    base = BASES[package]
    outside = [
        f"{error.__module__}.{error.__qualname__}"
        for error in exceptions_defined_in(package)
        if not error.__name__.startswith("_") and not issubclass(error, base)
    ]
    assert not outside, f"outside {base.__name__}: {outside}"


def test_no_two_exception_classes_share_a_name() -> None:
    """protocol/, dht/, node/, simulations/ and benchmarks/ define each exception name
    once (node/ had two CorruptChunk classes that meant different things)."""
    where: dict[str, list[str]] = defaultdict(list)
    for package in (*BASES, "simulations", "benchmarks"):
        for error in exceptions_defined_in(package):
            where[error.__name__].append(error.__module__)
    twice = {name: places for name, places in where.items() if len(places) > 1}
    assert not twice, twice
