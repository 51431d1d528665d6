"""The node's web page (node/web/): its protections, request by request, and the whole
page in a real headless browser (Debian's chromium and chromedriver) against a real
10-node testnet. A machine without chromium skips only the browser test, saying so."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from node.config import load_config
from node.errors import ConfigError
from node.web import load_or_create_secret, serve_web
from simulations.harness import SIMULATED_NODE, open_network, put

from .http import exchange

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT_ENVIRONMENT = "FREEHOLD_WEB_SCREENSHOT"  # where to save the docs' screenshot


async def _http(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    received = await exchange(address, request)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body's bytes; fails on a body that lacks its last chunk."""
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


def _request(method: str, path: str, *, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode()


async def test_the_api_answers_only_the_holder_of_its_secret(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """The page's three files are served to anyone (no secret in them); every API call
    needs the secret in X-Freehold-Token (401 without, and for a wrong or non-ASCII
    one). No cookie is ever set. A Host other than loopback (DNS rebinding): 421. A
    POST from another Origin: 403. Downloads take a single-use ticket. Malformed
    capabilities and bodies: 400 with the reason. The secret file is 0600."""
    secret = load_or_create_secret(tmp_path / "web.secret")
    assert stat.S_IMODE((tmp_path / "web.secret").stat().st_mode) == 0o600
    assert load_or_create_secret(tmp_path / "web.secret") == secret
    data = random.Random(12).randbytes(50_000)
    async with open_network(10, seed=12, node_config=SIMULATED_NODE) as network:
        node = network.nodes[0].node
        address = await network.nursery.start(serve_web, node, "127.0.0.1", 0, secret)
        capability = await put(network.nodes[0], data, name="notes.txt")
        signed = f"X-Freehold-Token: {secret}\r\n"

        status, headers, body = await _http(address, _request("GET", "/"))
        assert status == 200 and b"<title>Freehold node</title>" in body
        assert secret.encode() not in body and "set-cookie" not in headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        for wrong in ("", "X-Freehold-Token: wrong\r\n", "X-Freehold-Token: \u00e9t\u00e9\r\n"):
            status, _, _ = await _http(address, _request("GET", "/api/status", extra=wrong))
            assert status == 401
        status, headers, body = await _http(address, _request("GET", "/api/status", extra=signed))
        assert status == 200 and node.identity is not None and "set-cookie" not in headers
        assert node.identity.node_id.hex().encode() in body
        status, _, body = await _http(address, _request("GET", "/api/files", extra=signed))
        assert status == 200 and str(capability).encode() in body
        assert str(capability.verify_capability()).encode() in body

        rebinding = _request("GET", "/api/status", host="evil.example:4480", extra=signed)
        assert (await _http(address, rebinding))[0] == 421

        def post(path: str, value: object, extra: str = signed) -> bytes:
            body = json.dumps(value)
            length = f"Content-Length: {len(body.encode())}\r\n"
            return _request("POST", path, extra=extra + length) + body.encode()

        check = {"capability": str(capability)}
        assert (await _http(address, post("/api/check", check, extra="")))[0] == 401
        foreign = signed + "Origin: http://evil.example\r\n"
        assert (await _http(address, post("/api/check", check, extra=foreign)))[0] == 403
        status, _, body = await _http(address, post("/api/check", check))
        assert status == 200 and b'"healthy": true' in body
        for bad in ({"capability": 1}, {"capability": "junk"}, [1, 2]):
            status, _, body = await _http(address, post("/api/check", bad))
            assert status == 400, body

        verify_only = {"capability": str(capability.verify_capability())}
        status, _, body = await _http(address, post("/api/ticket", verify_only))
        assert status == 400 and b"cannot read" in body
        ask = {"capability": str(capability), "name": 'notes "2026".txt'}
        status, _, body = await _http(address, post("/api/ticket", ask))
        assert status == 200
        url = json.loads(body)["url"]
        status, headers, body = await _http(address, _request("GET", url))
        assert (status == 200 and data in body.replace(b"\r\n", b"")) or len(body) > len(data)
        assert 'filename="notes _2026_.txt"' in headers["content-disposition"]
        assert "filename*=UTF-8''notes%20%222026%22.txt" in headers["content-disposition"]
        status, _, _ = await _http(address, _request("GET", url))  # once only
        assert status == 403
        status, _, _ = await _http(address, _request("GET", "/api/get?ticket=made-up"))
        assert status == 403
        network.nursery.cancel_scope.cancel()


def test_the_page_is_served_on_loopback_only(tmp_path: Path) -> None:
    assert load_config(tmp_path).web_listen == ("127.0.0.1", 4480)
    assert load_config(tmp_path, {"web_listen": "off"}).web_listen is None
    assert load_config(tmp_path, {"web_listen": "[::1]:0"}).web_listen == ("::1", 0)
    for public in ("0.0.0.0:4480", "192.168.1.5:4480"):
        with pytest.raises(ConfigError, match="loopback"):
            load_config(tmp_path, {"web_listen": public})


# -------------------------------------------------------------- in a real browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver are not installed: the browser test is skipped")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: the browser test is skipped")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1200,1000",
        "--disable-gpu",
    ):
        options.add_argument(argument)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


def _wait(condition: object, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()  # type: ignore[operator]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("the page did not get there in time")
        time.sleep(0.1)


def test_upload_list_check_and_download_in_a_browser(browser: object, tmp_path: Path) -> None:
    """Sign in with `freehold web`'s link, see the node's status, upload a file with
    the page's form, see it listed with its capabilities, check it, download it, and
    get the same bytes back."""
    import subprocess
    import sys

    from selenium.webdriver.common.by import By

    from node.testnet import open_testnet, wait_until_joined

    driver = browser
    data = random.Random(13).randbytes(300_000)
    source = tmp_path / "holiday.bin"
    source.write_bytes(data)
    with open_testnet(10, tmp_path / "net") as testnet:
        wait_until_joined(testnet)
        first = testnet.nodes[0].data_dir
        link = subprocess.run(
            [sys.executable, "-m", "node.cli", "--data-dir", str(first), "web"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        ).stdout.strip()
        assert link.startswith("http://127.0.0.1:") and "/#token=" in link
        driver.get(link)  # type: ignore[attr-defined]
        find = driver.find_element  # type: ignore[attr-defined]
        _wait(lambda: len(find(By.ID, "node-id").text) == 64)
        assert find(By.ID, "contacts").text.startswith("9")
        assert "token" not in driver.current_url  # type: ignore[attr-defined]

        find(By.ID, "upload-file").send_keys(str(source))
        find(By.ID, "upload-button").click()
        capability = _wait(
            lambda: (
                find(By.ID, "upload-result").text.count("freehold:")
                and find(By.ID, "uploaded-capability").text
            )
        )
        assert str(capability).startswith("freehold:") and "#" in str(capability)
        _wait(lambda: "holiday.bin" in find(By.ID, "files").text)
        screenshot = os.environ.get(SCREENSHOT_ENVIRONMENT)
        if screenshot:
            driver.save_screenshot(screenshot)  # type: ignore[attr-defined]

        find(By.ID, "capability").send_keys(str(capability))
        find(By.ID, "check-button").click()
        _wait(lambda: find(By.ID, "check-result").text.startswith("healthy"), timeout=120)

        find(By.ID, "files").find_element(By.CSS_SELECTOR, "button.download").click()
        downloaded = driver.downloads / "holiday.bin"  # type: ignore[attr-defined]
        _wait(lambda: downloaded.exists() and downloaded.stat().st_size == len(data))
        assert downloaded.read_bytes() == data


async def test_a_port_in_use_costs_the_page_not_the_node(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node whose web port is taken runs on without its page, and says so."""
    from dataclasses import replace

    from node.node import Node
    from node.transport import MemoryNetwork
    from protocol.identity import Identity

    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    identity = Identity.generate(random.Random(14).randbytes)
    config = replace(
        SIMULATED_NODE,
        data_dir=tmp_path,
        listen=("10.0.0.1", 4410),
        storage="disk",
        web_listen=("127.0.0.1", port),
    )
    network = MemoryNetwork(seed=14)
    node = Node(config, identity=identity, link_layer=network.link_layer(identity, "10.0.0.1"))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.web_address is None and node.chunks is not None
        node.stop()
    taken.close()
    assert any("no web page" in record.getMessage() for record in caplog.records)
