"""The `freehold` command line on its own, without a network (issue 19): its options,
its help, its version, the sources `put` takes and the config keys it documents.
tests/node/test_cli_network.py runs it against real nodes."""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
from dataclasses import fields
from pathlib import Path

import pytest

from node import cli_client
from node.cli import build_parser, main
from node.config import DEFAULT_HAPPY, NodeConfig
from node.testnet import MAX_TESTNET_NODES, lowered_happy
from protocol.capability import ReadCapability, spell_id

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "arguments",
    [
        ["-v", "--json", "--data-dir", "d", "status"],
        ["status", "-v", "--json", "--data-dir", "d"],
        ["--json", "status", "--data-dir", "d", "-v"],
    ],
    ids=["before", "after", "mixed"],
)
def test_global_options_before_or_after_the_command(arguments: list[str]) -> None:
    """-v, --data-dir and --json mean the same before the command and after it."""
    parsed = build_parser().parse_args(arguments)
    assert (parsed.command, parsed.verbose, parsed.json, parsed.data_dir) == (
        "status",
        True,
        True,
        Path("d"),
    )


def test_global_options_default_when_absent() -> None:
    """Absent, the global options keep their defaults (a command's copy of an option
    does not overwrite the top one's value)."""
    parsed = build_parser().parse_args(["get", "freehold:x#y"])
    assert (parsed.verbose, parsed.json, parsed.data_dir) == (False, False, None)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`--version` prints the installed version and exits 0."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert re.fullmatch(r"freehold \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no commands")


def test_every_option_says_its_default() -> None:
    """Every option that takes a value says, in its --help, what it is when not given."""
    parser = build_parser()
    missing = []
    for name, command in [("freehold", parser), *_subparsers(parser).items()]:
        for action in command._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if action.nargs == 0:  # a flag (--full, --json, -v) or --help, --version
                continue
            if "default" not in (action.help or ""):
                missing.append(f"{name} {action.option_strings[-1]}")
    assert missing == []


def test_json_is_refused_where_there_is_nothing_to_print(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--json on a command with no JSON form (node, testnet, demo) is one line, exit 1."""
    for command in ("node", "testnet", "demo"):
        assert main([command, "--json"]) == 1
        error = capsys.readouterr().err
        assert error == f"freehold: --json is for the commands that talk to a node, not {command}\n"


@pytest.mark.parametrize("count", [0, -1, MAX_TESTNET_NODES + 1])
def test_testnet_refuses_a_count_it_cannot_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, count: int
) -> None:
    """`testnet --nodes` outside 1..MAX_TESTNET_NODES is one line saying the range,
    before any node starts."""
    assert main(["testnet", "--nodes", str(count), "--dir", str(tmp_path)]) == 1
    assert f"--nodes must be 1..{MAX_TESTNET_NODES}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_small_testnet_lowers_happy_to_its_size() -> None:
    """A testnet of fewer nodes than `happy` asks its nodes for as many distinct holders
    as it has; a larger one keeps the default."""
    assert [lowered_happy(count) for count in range(1, DEFAULT_HAPPY)] == list(
        range(1, DEFAULT_HAPPY)
    )
    assert lowered_happy(DEFAULT_HAPPY) is None
    assert lowered_happy(MAX_TESTNET_NODES) is None
    assert NodeConfig(data_dir=Path("x")).happy == DEFAULT_HAPPY


def test_every_config_key_is_in_the_table() -> None:
    """docs/CONFIG.md has one table row for every key config.toml takes."""
    text = (REPO / "docs" / "CONFIG.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)`", text, re.MULTILINE))
    keys = {item.name for item in fields(NodeConfig)} - {"data_dir", "storage"}
    assert rows == keys


def test_ids_are_spelt_as_the_capability_spells_them() -> None:
    """An id in a message is the base32 text the capability holds."""
    capability = ReadCapability(bytes(range(32)), bytes(32))
    assert str(capability).startswith(f"freehold:{spell_id(capability.manifest_id)}#")


def test_put_reads_a_fifo_whole_into_a_regular_file(tmp_path: Path) -> None:
    """A FIFO (its size unknown until its writer closes it) becomes a regular file the
    node can read by descriptor, with all the bytes, named after the FIFO."""
    from node.control import regular_file

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = os.urandom(3 * cli_client.PIECE + 5)

    def write() -> None:
        with open(fifo, "wb") as writer:
            writer.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    source, name = cli_client._open_source(argparse.Namespace(path=str(fifo), name=None))
    writer.join()
    with source:
        assert regular_file(source.fileno())
        assert os.fstat(source.fileno()).st_size == len(data)
        assert source.read() == data
    assert name == "pipe"


def test_put_of_a_descriptor_path_stores_no_name(tmp_path: Path) -> None:
    """`put /dev/fd/N` (as `put <(cmd)` runs) reads the pipe whole and stores no name
    (the path names a descriptor, not the data); --name still gives one."""
    from node.control import regular_file

    read_end, write_end = os.pipe()
    os.write(write_end, b"piped bytes")
    os.close(write_end)
    try:
        path = f"/dev/fd/{read_end}"
        source, name = cli_client._open_source(argparse.Namespace(path=path, name=None))
        with source:
            assert regular_file(source.fileno()) and source.read() == b"piped bytes"
        assert name == ""
    finally:
        os.close(read_end)


def test_json_is_one_line_of_sorted_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """What --json prints is one JSON object on one line, keys sorted (stable to diff)."""
    cli_client._print_json({"b": 1, "a": [1, 2]})
    out = capsys.readouterr().out
    assert out == '{"a": [1, 2], "b": 1}\n'
    assert json.loads(out) == {"a": [1, 2], "b": 1}
