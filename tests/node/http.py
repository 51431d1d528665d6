"""One HTTP exchange over loopback TCP, as raw bytes, for the tests of the node's
metrics endpoint and web page (what a browser or a scraper would send, malformed too)."""

from __future__ import annotations

import trio


async def exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send `request` and read until the server closes the connection."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(request)
        received = bytearray()
        while data := await stream.receive_some(65536):
            received += data
    return bytes(received)
