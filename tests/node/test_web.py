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


def _request(method: str, path: str, *, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode()


async def test_the_page_lets_in_only_the_holder_of_its_secret(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """No cookie: 401. A wrong token: 403. The right one: a cookie (HttpOnly,
    SameSite=Strict) and a redirect; with it, the status. A Host other than loopback
    (DNS rebinding): 421. A POST without the X-Freehold header, or from another origin:
    403. Malformed capabilities: 400 with the reason. The secret file is 0600."""
    secret = load_or_create_secret(tmp_path / "web.secret")
    assert stat.S_IMODE((tmp_path / "web.secret").stat().st_mode) == 0o600
    assert load_or_create_secret(tmp_path / "web.secret") == secret
    data = random.Random(12).randbytes(50_000)
    async with open_network(10, seed=12, node_config=SIMULATED_NODE) as network:
        node = network.nodes[0].node
        address = await network.nursery.start(serve_web, node, "127.0.0.1", 0, secret)
        capability = await put(network.nodes[0], data, name="notes.txt")

        status, _, _ = await _http(address, _request("GET", "/api/status"))
        assert status == 401
        status, _, _ = await _http(address, _request("GET", "/"))
        assert status == 401
        status, _, _ = await _http(address, _request("GET", "/?token=wrong"))
        assert status == 403
        status, headers, _ = await _http(address, _request("GET", f"/?token={secret}"))
        assert status == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        signed = f"Cookie: {cookie.split(';')[0]}\r\n"

        status, headers, body = await _http(address, _request("GET", "/", extra=signed))
        assert status == 200 and b"<title>Freehold node</title>" in body
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        status, _, body = await _http(address, _request("GET", "/api/status", extra=signed))
        assert status == 200 and node.identity is not None
        assert node.identity.node_id.hex().encode() in body
        status, _, body = await _http(address, _request("GET", "/api/files", extra=signed))
        assert status == 200 and str(capability).encode() in body
        assert str(capability.verify_capability()).encode() in body

        rebinding = _request("GET", "/api/status", host="evil.example:4480", extra=signed)
        assert (await _http(address, rebinding))[0] == 421
        check = json.dumps({"capability": str(capability)})
        length = f"Content-Length: {len(check)}\r\n"
        no_header = _request("POST", "/api/check", extra=signed + length) + check.encode()
        assert (await _http(address, no_header))[0] == 403
        foreign = signed + length + "X-Freehold: 1\r\nOrigin: http://evil.example\r\n"
        assert (await _http(address, _request("POST", "/api/check", extra=foreign)))[0] == 403
        good = signed + length + "X-Freehold: 1\r\n"
        status, _, body = await _http(
            address, _request("POST", "/api/check", extra=good) + check.encode()
        )
        assert status == 200 and b'"healthy": true' in body

        status, _, body = await _http(address, _request("GET", "/api/get?cap=junk", extra=signed))
        assert status == 400 and b"not a capability" in body
        verify_only = f"/api/get?cap={capability.verify_capability()}"
        status, _, body = await _http(address, _request("GET", verify_only, extra=signed))
        assert status == 400 and b"cannot read" in body
        status, headers, body = await _http(
            address, _request("GET", f"/api/get?cap={capability}&name=notes.txt", extra=signed)
        )
        assert status == 200 and body.replace(b"\r\n", b"") != b""
        assert 'filename="notes.txt"' in headers["content-disposition"]
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
        assert link.startswith("http://127.0.0.1:") and "?token=" in link
        driver.get(link)  # type: ignore[attr-defined]
        find = driver.find_element  # type: ignore[attr-defined]
        _wait(lambda: len(find(By.ID, "node-id").text) == 64)
        assert find(By.ID, "contacts").text.startswith("9")
        assert "?token=" not in driver.current_url  # type: ignore[attr-defined]

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

        find(By.ID, "files").find_element(By.LINK_TEXT, "download").click()
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
