"""The import rules of DESIGN.md: node -> dht -> protocol, and protocol/ does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUR_PACKAGES = {"protocol", "dht", "node", "simulations", "benchmarks"}
# What each package may import of ours (besides itself).
ALLOWED = {
    "protocol": set(),
    "dht": {"protocol"},
    "node": {"dht", "protocol"},
    "simulations": {"node", "dht", "protocol"},
    # benchmarks may run the simulation harness (many real nodes in virtual time): the
    # audit benchmark counts a check's traffic on it. Nothing imports benchmarks.
    "benchmarks": {"simulations", "node", "dht", "protocol"},
}
# Modules that mean I/O, a clock or ambient randomness; protocol/ takes these as inputs.
IO_MODULES = {
    "trio",
    "socket",
    "asyncio",
    "time",
    "datetime",
    "selectors",
    "select",
    "random",
    "os",
    "ssl",
    "threading",
    "subprocess",
    "sqlite3",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package: str) -> None:
    """No package imports one of ours that DESIGN.md does not let it depend on."""
    for path in python_files(package):
        ours = imported_modules(path) & OUR_PACKAGES - {package}
        forbidden = ours - ALLOWED[package]
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_protocol_does_no_io() -> None:
    """protocol/ imports no trio, socket, clock, os or random module."""
    files = python_files("protocol")
    assert files, "protocol/ has no modules"
    for path in files:
        io = imported_modules(path) & IO_MODULES
        assert not io, f"{path.relative_to(ROOT)} imports {sorted(io)}"
        assert "urandom" not in path.read_text(), f"{path.relative_to(ROOT)} uses os.urandom"


def test_checker_sees_forbidden_imports(tmp_path: Path) -> None:
    """The import scanner itself finds plain, dotted and from-imports."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import trio\nimport os.path\nfrom node.transport import x\nfrom . import y\n"
    )
    assert imported_modules(sample) == {"trio", "os", "node"}
