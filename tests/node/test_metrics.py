"""Prometheus metrics (node/metrics.py): what a scrape of a running node shows after a
put and a get, and what the endpoint does with requests that are not a scrape."""

from __future__ import annotations

import io
import random
from dataclasses import replace

import trio
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

from node.metrics import serve_metrics
from node.owner import Owner
from simulations.harness import SIMULATED_NODE, open_network, put

from .http import exchange


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_scrape_shows_the_puts_gets_chunks_and_round_trips(
    autojump_clock: MockClock,
) -> None:
    data = random.Random(8).randbytes(150_000)
    async with open_network(10, seed=8, node_config=SIMULATED_NODE) as network:
        node = network.nodes[0].node
        address = await network.nursery.start(serve_metrics, node, "127.0.0.1", 0)
        capability = await put(network.nodes[0], data)
        sink = io.BytesIO()

        async def write(view: memoryview) -> None:
            sink.write(view)

        await Owner(node).get(capability, write)
        response = await exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-type: text/plain; version=" in head
        samples = _samples(body.decode())
        assert samples[("freehold_puts_total", ())] == 1
        assert samples[("freehold_put_bytes_total", ())] == len(data)
        assert samples[("freehold_gets_total", ())] == 1
        assert samples[("freehold_peers", ())] == len(node.dht.routing)  # type: ignore[union-attr]
        assert node.dht is not None
        held = node.dht.records.statistics().records
        assert samples[("freehold_provider_records", ())] == held
        refused = ("freehold_provider_records_refused_total", (("limit", "budget"),))
        assert samples[refused] == 0
        stored = sum(
            n.node.chunks.store.statistics().chunks  # type: ignore[union-attr]
            for n in network.nodes
        )
        assert stored >= 10
        # Round trips of FIND_NODE and STORE_CHUNK were observed, into cumulative buckets.
        for message in ("FindNode", "StoreChunk", "FetchChunk"):
            count = samples[("freehold_rpc_latency_seconds_count", (("message", message),))]
            inf = samples[
                ("freehold_rpc_latency_seconds_bucket", (("le", "+Inf"), ("message", message)))
            ]
            assert count == inf >= 1
        network.nursery.cancel_scope.cancel()


async def test_the_endpoint_serves_metrics_and_nothing_else(autojump_clock: MockClock) -> None:
    async with open_network(1, seed=9, node_config=SIMULATED_NODE) as network:
        node = network.nodes[0].node
        address = await network.nursery.start(serve_metrics, node, "127.0.0.1", 0)
        assert (await exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 404"
        )
        post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        assert (await exchange(address, post)).startswith(b"HTTP/1.1 405")
        assert await exchange(address, b"\x00\x01 not http at all\r\n\r\n") == b""
        assert await exchange(address, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 5000) == b""
        # A client that sends nothing is dropped after its time; the server goes on.
        silent = await trio.open_tcp_stream(*address)
        with trio.fail_after(60):
            assert await silent.receive_some(10) == b""
        await silent.aclose()
        ok = await exchange(address, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200") and b"freehold_peers" in ok
        network.nursery.cancel_scope.cancel()


async def test_a_node_with_metrics_listen_serves_them(autojump_clock: MockClock) -> None:
    config = replace(SIMULATED_NODE, metrics_listen=("127.0.0.1", 0))
    async with open_network(1, seed=10, node_config=config) as network:
        node = network.nodes[0].node
        assert node.metrics_address is not None
        response = await exchange(node.metrics_address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"freehold_chunks_stored 0.0" in response
        network.nursery.cancel_scope.cancel()
