"""Metrics for monitoring, in the Prometheus text format, at `http://<metrics_listen>/metrics`.

Off unless `metrics_listen` is set (README.md's settings). Every figure is read from
the running node's parts at each scrape (`NodeCollector`), so nothing is counted
twice and the node keeps no metrics library on its hot paths; prometheus-client
formats them. The endpoint serves `GET /metrics` and nothing else, without
authentication, like node_exporter: the figures name no file, key or peer, but bind
it to loopback or a monitoring network, not the open internet.

| metric (freehold_...)                   | type      | from                               |
|-----------------------------------------|-----------|------------------------------------|
| chunks_stored, stored_bytes,            | gauge     | the chunk store                    |
| capacity_bytes, free_bytes              |           |                                    |
| chunks_received_total, chunks_served_total | counter | STORE_CHUNK and FETCH_CHUNK served |
| puts_total, gets_total (+ _failed),     | counter   | the owner's puts and gets          |
| put_bytes_total, get_bytes_total        |           |                                    |
| audits_total, audits_failed_total,      | counter   | the steward's audits of held       |
| audit_chunks_proven_total,              |           | segments                           |
| audit_chunks_unproven_total             |           |                                    |
| repair_backlog                          | gauge     | segments at their repair threshold |
| segments_repaired_total,                | counter   | repairs                            |
| chunks_rebuilt_total, repair_bytes_total |          |                                    |
| peers, connections                      | gauge     | routing table, open connections    |
| provider_records,                       | gauge,    | the DHT's provider records, and    |
| provider_records_refused_total{limit}   | counter   | ADD_PROVIDERs refused per limit    |
| handshakes_failed_total,                | counter   | the transport                      |
| connections_refused_total,              |           |                                    |
| peers_cut_off_total, requests_busy_total |          |                                    |
| rpc_latency_seconds{message}            | histogram | our answered requests' round trips |

The server is h11 (sans-I/O HTTP) on the node's trio loop: one request per connection,
at most `MAX_CLIENTS` at once, each given `CLIENT_TIMEOUT` and `MAX_REQUEST_BYTES`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from node.transport.latency import BUCKETS

if TYPE_CHECKING:
    from node.node import Node

__all__ = ["NodeCollector", "metrics_registry", "serve_metrics"]

logger = logging.getLogger(__name__)

MAX_CLIENTS: Final = 8
CLIENT_TIMEOUT: Final = 10.0
MAX_REQUEST_BYTES: Final = 16 * 1024
PREFIX: Final = "freehold_"


class NodeCollector(Collector):
    """The node's figures at the moment of a scrape (the module's table)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        if node.chunks is not None:
            statistics = node.chunks.store.statistics()
            yield _gauge("chunks_stored", "Chunks this node holds", statistics.chunks)
            yield _gauge("stored_bytes", "Bytes on disk of the chunks held", statistics.used_bytes)
            yield _gauge("capacity_bytes", "Disk space donated", statistics.capacity)
            yield _gauge("free_bytes", "Donated space still free", statistics.free_bytes)
            yield _counter("chunks_received", "Chunks stored for peers", node.chunks.stored)
            yield _counter("chunks_served", "Chunks served to peers", node.chunks.served)
        activity = node.activity
        for name, value, text in (
            ("puts", activity.puts, "Puts by this node's owner"),
            ("puts_failed", activity.puts_failed, "Puts that failed"),
            ("put_bytes", activity.put_bytes, "File bytes put"),
            ("gets", activity.gets, "Gets by this node's owner"),
            ("gets_failed", activity.gets_failed, "Gets that failed"),
            ("get_bytes", activity.get_bytes, "File bytes got"),
        ):
            yield _counter(name, text, value)
        if node.files is not None:
            repairs = node.files.repairs
            for name, value, text in (
                ("audits", repairs.segments_checked, "Audits of held segments"),
                ("audits_failed", repairs.audits_failed, "Audits that could not be made"),
                ("audit_chunks_proven", repairs.chunks_proven, "Chunks audits proved"),
                ("audit_chunks_unproven", repairs.chunks_unproven, "Chunks no holder proved"),
                ("segments_repaired", repairs.segments_repaired, "Segments repaired"),
                ("chunks_rebuilt", repairs.chunks_rebuilt, "Chunks rebuilt by repairs"),
                ("repair_bytes", repairs.bytes_moved, "Chunk bytes repairs moved"),
            ):
                yield _counter(name, text, value)
        if node.steward is not None:
            backlog = node.steward.plan.backlog()
            yield _gauge("repair_backlog", "Held segments waiting for a repair", backlog)
        if node.dht is not None:
            yield _gauge("peers", "Contacts in the routing table", len(node.dht.routing))
            records = node.dht.records.statistics()
            yield _gauge("provider_records", "Provider records held for peers", records.records)
            rejected = CounterMetricFamily(
                PREFIX + "provider_records_refused",
                "ADD_PROVIDERs refused, by the limit that refused them",
                labels=["limit"],
            )
            for limit, value in (
                ("peer", records.rejected_over_quota),
                ("prefix", records.rejected_over_prefix_quota),
                ("key", records.rejected_key_full),
                ("budget", records.rejected_budget_full),
            ):
                rejected.add_metric([limit], value)
            yield rejected
        if node.transport is not None:
            transport = node.transport.statistics()
            yield _gauge("connections", "Open connections", transport.connections_open)
            for name, value, text in (
                ("handshakes_failed", transport.handshakes_failed, "Handshakes that failed"),
                ("connections_refused", transport.connections_refused, "Inbound refused"),
                ("peers_cut_off", transport.peers_cut_off, "Peers cut off for misbehaving"),
                ("requests_busy", transport.requests_busy, "Requests answered BUSY"),
                ("request_timeouts", transport.request_timeouts, "Our requests timed out"),
            ):
                yield _counter(name, text, value)
            latency = HistogramMetricFamily(
                PREFIX + "rpc_latency_seconds",
                "Round trips of this node's answered requests",
                labels=["message"],
            )
            histogram = transport.latency
            for kind, counts in sorted(histogram.counts.items()):
                cumulative, buckets = 0, []
                for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
                    cumulative += count
                    buckets.append((_le(bound), cumulative))
                latency.add_metric([kind], buckets, histogram.sums[kind])
            yield latency


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, text, value=value)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, text, value=value)


def metrics_registry(node: Node) -> CollectorRegistry:
    """A registry of the node's figures alone (none of the process-wide defaults, so
    that many nodes in one process keep apart)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry


async def serve_metrics(
    node: Node,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve GET /metrics on (host, port) until cancelled; started() with the address."""
    registry = metrics_registry(node)
    listeners = await trio.open_tcp_listeners(port, host=host)
    name = listeners[0].socket.getsockname()
    limiter = trio.CapacityLimiter(MAX_CLIENTS)

    async def handle(stream: trio.SocketStream) -> None:
        if limiter.available_tokens == 0:
            await stream.aclose()  # a scraper needs one connection, not many
            return
        async with limiter, stream:
            with trio.move_on_after(CLIENT_TIMEOUT):
                try:
                    await _answer(stream, registry)
                except (h11.ProtocolError, trio.BrokenResourceError, OSError) as exc:
                    logger.debug("metrics client dropped: %s", exc)

    task_status.started((str(name[0]), int(name[1])))
    await trio.serve_listeners(handle, listeners)


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_REQUEST_BYTES)
            if not data:
                return
            connection.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            break
        return
    target = event.target.split(b"?", 1)[0]
    if event.method not in (b"GET", b"HEAD"):
        status, body, kind = 405, b"only GET /metrics\n", b"text/plain; charset=utf-8"
    elif target != b"/metrics":
        status, body, kind = 404, b"see /metrics\n", b"text/plain; charset=utf-8"
    else:
        status, body, kind = 200, generate_latest(registry), CONTENT_TYPE_LATEST.encode()
    headers = [
        (b"content-type", kind),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    reason = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed"}[status]
    response = h11.Response(status_code=status, headers=headers, reason=reason)
    await stream.send_all(connection.send(response))
    if event.method != b"HEAD":
        await stream.send_all(connection.send(h11.Data(data=body)))
    await stream.send_all(connection.send(h11.EndOfMessage()))
