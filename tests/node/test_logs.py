"""The node's log: a file that rotates, and INFO lines that tell what the owner did
without naming a capability or a key (issue 19, part 5)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from trio.testing import MockClock

from node.config import load_config
from node.logs import configure_logging


@pytest.fixture
def root_logging() -> object:
    """Give the root logger back as it was (pytest's capture handlers included)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_the_log_file_rotates_and_keeps_its_backups(tmp_path: Path, root_logging: object) -> None:
    """A log file relative to the data directory; past log_max_size it is rotated,
    and only log_backups old files are kept."""
    (tmp_path / "config.toml").write_text(
        'log_file = "logs/node.log"\nlog_max_size = "2 KiB"\nlog_backups = 2\n'
    )
    config = load_config(tmp_path)
    assert config.log_path == tmp_path / "logs" / "node.log"
    configure_logging(
        "INFO", config.log_path, max_bytes=config.log_max_size, backups=config.log_backups
    )
    for number in range(200):
        logging.getLogger("node.test").info("line %d of the log", number)
        logging.getLogger("node.test").debug("not at INFO %d", number)
    names = sorted(path.name for path in (tmp_path / "logs").iterdir())
    assert names == ["node.log", "node.log.1", "node.log.2"]
    for path in (tmp_path / "logs").iterdir():
        assert path.stat().st_size <= 2048
    text = (tmp_path / "logs" / "node.log").read_text()
    assert "line 199 of the log" in text and "not at INFO" not in text
    assert " INFO node.test: " in text


@pytest.mark.parametrize(
    ("setting", "problem"),
    [("log_max_size = 0", "log_max_size"), ("log_backups = -1", "log_backups")],
)
def test_bad_log_settings_are_one_line_errors(tmp_path: Path, setting: str, problem: str) -> None:
    from node.errors import ConfigError

    (tmp_path / "config.toml").write_text(setting + "\n")
    with pytest.raises(ConfigError, match=problem):
        load_config(tmp_path)


async def test_put_and_get_log_a_line_each_without_the_capability(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A put and a get on a simulated network each log one INFO line with the size and
    time; no line holds the capability, its key or its manifest id."""
    import io
    import random

    from node.owner import Owner
    from simulations.harness import SIMULATED_NODE, open_network, put

    data = random.Random(5).randbytes(200_000)
    with caplog.at_level(logging.INFO):
        async with open_network(10, seed=5, node_config=SIMULATED_NODE) as network:
            uploader = network.nodes[0]
            capability = await put(uploader, data, name="secret-name.txt")
            received = io.BytesIO()

            async def write(view: memoryview) -> None:
                received.write(view)

            await Owner(network.nodes[3].node).get(capability, write)
            assert received.getvalue() == data
            assert uploader.node.activity.puts == 1
            assert uploader.node.activity.put_bytes == len(data)
            assert network.nodes[3].node.activity.gets == 1
            network.nursery.cancel_scope.cancel()
    lines = [record.getMessage() for record in caplog.records]
    assert sum(line.startswith("put 0.2 MB in") for line in lines) == 1
    assert sum(line.startswith("got 0.2 MB in") for line in lines) == 1
    secrets = [
        str(capability),
        str(capability).split("#")[1],  # the key as the capability spells it
        capability.file_key.hex(),
        capability.manifest_id.hex(),
        str(capability.verify_capability()),
        "secret-name",
    ]
    for line in lines:
        for secret in secrets:
            assert secret not in line, line
