"""The node's web page: status, upload, download, your files and their check, on loopback.

Served by the node itself (Starlette on Hypercorn's trio worker, in the node's nursery)
at `web_listen`, 127.0.0.1:4480 by default, and only ever on a loopback address. It is
a local admin page, protected like one:

| threat                                   | defence                                        |
|------------------------------------------|------------------------------------------------|
| another user or program on the machine   | a per-node secret (`<data-dir>/web.secret`,    |
| uses the page's API                      | 0600). `freehold web` prints a link holding it |
|                                          | in the fragment (`#token=`), which the browser |
|                                          | never sends; the page keeps it in session      |
|                                          | storage (per origin: per port) and sends it in |
|                                          | the X-Freehold-Token header of every API call. |
|                                          | No cookie: browsers share cookies across the   |
|                                          | ports of a host, so a cookie would reach any   |
|                                          | other local server the browser visits          |
| a web site the user visits sends         | it cannot know the secret, nor send a custom   |
| requests to it (CSRF)                    | header without a CORS preflight we never grant;|
|                                          | a POST from another Origin is refused too      |
| downloads, which a link cannot give a    | POST /api/ticket (with the secret) makes a     |
| header to                                | single-use ticket for one file, good for 60 s  |
| DNS rebinding (a name that resolves to   | the Host header must be 127.0.0.1, localhost   |
| 127.0.0.1)                               | or [::1]                                       |
| script injection, framing                | no inline script, a strict Content-Security-   |
|                                          | Policy (self only), frame-ancestors none; no   |
|                                          | third-party asset: the page is three files     |
|                                          | with no secret in them, served to anyone       |

The page keeps the storage promise: it talks only to this node, over loopback; the
node encrypts before anything leaves the machine; the read capabilities (keys) are
shown only to whoever holds the secret.

| route                  | what                                                       |
|------------------------|------------------------------------------------------------|
| GET /                  | the page (index.html, app.js, app.css); no secret in it     |
| GET /api/status        | id, version, uptime, address, contacts, space, repairs     |
| GET /api/files         | the files this node put or keeps, with both capabilities   |
| POST /api/put?name=N   | the request body is the file (Content-Length required)     |
| POST /api/ticket       | {"capability": C, "name": N}: a download link for 60 s      |
| GET /api/get?ticket=T  | the file's bytes, streamed as they are verified (no header) |
| POST /api/check        | {"capability": C}: the check's report                      |
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, quote

import trio

from node.errors import NodeError
from protocol.capability import ReadCapability, VerifyCapability, parse_capability
from protocol.errors import ProtocolError

if TYPE_CHECKING:
    from node.node import Node

__all__ = [
    "SECRET_FILE",
    "WEB_ADDRESS_FILE",
    "load_or_create_secret",
    "login_url",
    "serve_web",
    "web_app",
]

logger = logging.getLogger(__name__)

SECRET_FILE: Final = "web.secret"
WEB_ADDRESS_FILE: Final = "web.address"
TOKEN_HEADER: Final = "x-freehold-token"
TICKET_SECONDS: Final = 60.0
MAX_TICKETS: Final = 64
ALLOWED_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS: Final = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def load_or_create_secret(path: Path) -> str:
    """The page's secret at `path`, made (0600, never overwritten) on first use."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secret + "\n")
        return secret
    if mode & 0o077:
        raise NodeError(f"{path} is readable by others; run `chmod 600 {path}`")
    return path.read_text().strip()


def login_url(address: str, secret: str) -> str:
    """The link that opens the page (what `freehold web` prints): the secret rides in
    the fragment, which the browser keeps to itself."""
    return f"http://{address}/#token={secret}"


def _version() -> str:
    try:
        return version("freehold")
    except PackageNotFoundError:
        return "unknown"


def _static(name: str) -> bytes:
    return resources.files("node.web").joinpath(name).read_bytes()


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def web_app(node: Node, secret: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The page's ASGI application over `node` (which must be running)."""
    from node.owner import Owner

    owner = Owner(node)
    started = time.monotonic()
    tickets: dict[str, tuple[ReadCapability, str, float]] = {}
    files = {path: (_static(name), kind) for path, (name, kind) in STATIC.items()}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        try:
            await _route(scope, headers, receive, send)
        except _Refused as refused:
            await _json(send, refused.status, {"error": str(refused)})
        except (NodeError, ProtocolError) as exc:
            await _json(send, 400, {"error": str(exc)})

    async def _route(scope: Scope, headers: dict[str, str], receive: Receive, send: Send) -> None:
        host = headers.get("host", "")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if hostname not in ALLOWED_HOSTS:
            raise _Refused(421, "this page answers only to 127.0.0.1, localhost or [::1]")
        method, path = scope["method"], scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if method == "GET" and path in files:
            body, kind = files[path]
            await _respond(send, 200, body, kind.encode())
            return
        if method == "GET" and path == "/api/get":
            await _get(query, send)  # the ticket is its proof
            return
        if not _same(headers.get(TOKEN_HEADER, ""), secret):
            raise _Refused(401, "no token: open the link `freehold web` prints")
        origin = headers.get("origin")
        if method == "POST" and origin and origin != f"http://{host}":
            raise _Refused(403, "a request from another site")
        if method == "POST" and path == "/api/ticket":
            ask = _json_body(await _body(receive, limit=4096))
            capability = _capability(ask.get("capability"))
            if not isinstance(capability, ReadCapability):
                raise _Refused(400, "a verify capability cannot read: it has no key")
            name = ask.get("name") or "download"
            if not isinstance(name, str):
                raise _Refused(400, "a name is a string")
            now = time.monotonic()
            for old, (_, _, expires) in list(tickets.items()):
                if expires <= now:
                    del tickets[old]
            if len(tickets) >= MAX_TICKETS:
                raise _Refused(429, "too many downloads asked for at once")
            ticket = secrets.token_urlsafe(24)
            tickets[ticket] = (capability, name, now + TICKET_SECONDS)
            await _json(send, 200, {"url": f"/api/get?ticket={ticket}"})
        elif method == "GET" and path == "/api/status":
            status = owner.status()
            status.update(version=_version(), uptime=time.monotonic() - started)
            await _json(send, 200, status)
        elif method == "GET" and path == "/api/files":
            listed = owner.files()
            for entry in listed:
                read = ReadCapability.parse(entry["capability"])
                entry["verify"] = str(read.verify_capability())
            await _json(send, 200, {"files": listed})
        elif method == "POST" and path == "/api/put":
            await _put(headers, query, receive, send)
        elif method == "POST" and path == "/api/check":
            ask = _json_body(await _body(receive, limit=4096))
            report = await owner.check(_capability(ask.get("capability")))
            await _json(send, 200, report.summary())
        else:
            raise _Refused(404, f"no {method} {path} here")

    async def _put(
        headers: dict[str, str], query: dict[str, list[str]], receive: Receive, send: Send
    ) -> None:
        try:
            size = int(headers["content-length"])
        except (KeyError, ValueError):
            raise _Refused(411, "the upload must say its length") from None
        name = query.get("name", [""])[0][:255]

        async def blocks() -> Any:
            received = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise NodeError("the browser went away during the upload")
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > size:
                    raise NodeError("the upload is longer than it said")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        capability = await owner.put(blocks(), size=size, name=name)
        verify = capability.verify_capability()
        await _json(send, 200, {"capability": str(capability), "verify": str(verify)})

    async def _get(query: dict[str, list[str]], send: Send) -> None:
        ticket = tickets.pop(query.get("ticket", [""])[0], None)
        if ticket is None or ticket[2] <= time.monotonic():
            raise _Refused(403, "no such download ticket (they last 60 s, once)")
        capability, name, _ = ticket
        started_response = False

        async def write(view: memoryview) -> None:
            nonlocal started_response
            if not started_response:
                started_response = True
                disposition = _disposition(name)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"application/octet-stream"),
                            (b"content-disposition", disposition),
                            *SECURITY_HEADERS,
                        ],
                    }
                )
            await send({"type": "http.response.body", "body": bytes(view), "more_body": True})

        try:
            await owner.get(capability, write)
        except (NodeError, ProtocolError) as exc:
            if not started_response:
                raise
            # Mid-body: the connection must break, so that the browser sees a failed
            # download and not a short file.
            raise RuntimeError(f"the download failed part way: {exc}") from exc
        if not started_response:
            await write(memoryview(b""))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _capability(text: object) -> ReadCapability | VerifyCapability:
    if not isinstance(text, str):
        raise _Refused(400, 'send {"capability": "freehold:..."}')
    try:
        return parse_capability(text.strip())
    except ProtocolError as exc:
        raise _Refused(400, f"not a capability: {exc}") from None


def _same(given: str, secret: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode())


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise _Refused(400, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise _Refused(400, "the body is not a JSON object")
    return value


def _disposition(name: str) -> bytes:
    """An attachment named `name`: ASCII for old browsers, UTF-8 (RFC 6266) for all."""
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}".encode()


async def _body(receive: Receive, *, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            raise _Refused(413, f"at most {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)


async def _json(send: Send, status: int, value: Any) -> None:
    body = json.dumps(value).encode()
    await _respond(send, status, body, b"application/json")


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    kind: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", kind),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def serve_web(
    node: Node,
    host: str,
    port: int,
    secret: str,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the page on (host, port), a loopback address, until cancelled."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("node.web.server")
    config.loglevel = "WARNING"
    app = web_app(node, secret)

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, config, task_status=task_status, mode="asgi")  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        bound = binds[0].removeprefix("http://")
        bound_host, _, bound_port = bound.rpartition(":")
        task_status.started((bound_host.strip("[]"), int(bound_port)))
