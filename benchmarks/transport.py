"""Transport benchmark: Noise-over-TCP RPC between two processes, beside plain sockets.

What it measures, over TCP loopback (127.0.0.1, port 0) between two processes (the
server is spawned with its own interpreter and its own trio loop; it sends its address
and NodeId back over a pipe and is killed at the end, also on error):

| metric           | Freehold                         | baseline                          |
|------------------|----------------------------------|-----------------------------------|
| bulk MB/s        | 1 MiB BENCH_DATA requests, each  | 1 MiB length-prefixed messages,   |
| (MB = 10**6 B)   | answered by a BENCH_ACK; 8 in    | each answered by an 8-byte ack;   |
|                  | flight (8 tasks in a loop)       | 8 in flight (pipelined)           |
| round trips/s,   | PING/PONG, one request at a time | 8-byte echo, one at a time        |
| 1 at a time      |                                  |                                   |
| round trips/s,   | 32 tasks, each sending PINGs in  | pipelined: the client keeps 32    |
| 32 in flight     | a loop                           | echoes outstanding                |

The baseline is a blocking-socket server and client (4-byte big-endian length prefix,
TCP_NODELAY, buffered reads, one `sendall` per message), measured in the same run.
Every measurement runs for a fixed time after a warm-up with the same code; a worker
starts no new operation after the deadline, and the rate counts every completed
operation over the time until the last one finished.

`BenchData` (0xB0) and `BenchAck` (0xB1) are benchmark-only messages in the range
`benchmarks.BENCHMARK_TYPE_CODES` reserves; they exist only in processes that import
this module.
"""

from __future__ import annotations

import cProfile
import json
import multiprocessing
import os
import pstats
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Annotated, Any, Final

import nacl.utils
import trio

from benchmarks import BENCHMARK_TYPE_CODES, BenchmarkError, BenchmarkOptions
from node.transport import Peer, TcpLinkLayer, Transport, TransportConfig, open_transport
from protocol.identity import Identity, NodeId
from protocol.messages import Bytes, Int, Message, Ping, Pong, message

__all__ = [
    "METRICS",
    "BenchAck",
    "BenchData",
    "Durations",
    "Metric",
    "handle_bench_data",
    "run_transport_benchmark",
]

LOOPBACK: Final = ("127.0.0.1", 0)
BULK_MESSAGE_SIZE: Final = 1024 * 1024
BULK_IN_FLIGHT: Final = 8
PIPELINE_DEPTH: Final = 32
ROUND_TRIP_PAYLOAD: Final = b"freehold"
# The client runs with a node's default limits (a 1 MiB message fits the default frame
# size). The server allows more requests in flight than the default 64, which is only a
# cut-off threshold (nothing waits on it, so the figures do not depend on it): the RPC
# layer counts a request as in flight until its serving task runs again after handing
# its answer to the link, so on a busy machine a client that keeps 32 outstanding can be
# counted at 64 and cut off. Back to the default once that accounting is fixed.
CLIENT_CONFIG: Final = TransportConfig()
SERVER_CONFIG: Final = TransportConfig()
# The baseline's framing: a 4-byte big-endian length, then the message. Its server echoes
# messages up to ECHO_LIMIT bytes and answers longer ones with an 8-byte ACK of the size.
LENGTH: Final = struct.Struct(">I")
ACK: Final = struct.Struct(">Q")
ECHO_LIMIT: Final = 64
BASELINE_READ_BUFFER: Final = 256 * 1024
# A spawned server that has not reported its address by then is taken for dead.
SERVER_START_TIMEOUT: Final = 30.0
PROFILE_LINES: Final = 25

BENCH_DATA_TYPE_CODE: Final = 0xB0
BENCH_ACK_TYPE_CODE: Final = 0xB1
assert BENCH_DATA_TYPE_CODE in BENCHMARK_TYPE_CODES
assert BENCH_ACK_TYPE_CODE in BENCHMARK_TYPE_CODES


@message(type_code=BENCH_DATA_TYPE_CODE)
@dataclass(frozen=True, slots=True)
class BenchData(Message):
    """Benchmark-only: a bulk payload; the server answers BENCH_ACK with its size."""

    data: Annotated[bytes, Bytes(max_len=BULK_MESSAGE_SIZE)]


@message(type_code=BENCH_ACK_TYPE_CODE)
@dataclass(frozen=True, slots=True)
class BenchAck(Message):
    """Benchmark-only: the answer to BENCH_DATA, the number of bytes received."""

    size: Annotated[int, Int(min=0, max=BULK_MESSAGE_SIZE)]


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure of the report; `name` is its key in the JSON lines."""

    name: str
    label: str
    unit: str
    target: float


BULK: Final = Metric(
    "bulk_mb_per_s", f"bulk, 1 MiB messages, {BULK_IN_FLIGHT} in flight", "MB/s", 500
)
ONE_AT_A_TIME: Final = Metric(
    "round_trips_per_s_1_in_flight", "RPC round trips, 1 at a time", "rt/s", 8000
)
PIPELINED: Final = Metric(
    "round_trips_per_s_32_in_flight",
    f"RPC round trips, {PIPELINE_DEPTH} in flight",
    "rt/s",
    25000,
)
METRICS: Final = (BULK, ONE_AT_A_TIME, PIPELINED)


@dataclass(frozen=True, slots=True)
class Durations:
    """How long each measurement and its warm-up run, in seconds."""

    warmup: float
    bulk: float
    round_trips: float

    def of(self, metric: Metric) -> float:
        return self.bulk if metric is BULK else self.round_trips


FULL_RUN: Final = Durations(warmup=0.3, bulk=2.5, round_trips=2.0)
QUICK_RUN: Final = Durations(warmup=0.05, bulk=0.3, round_trips=0.25)


# ------------------------------------------------------------------ server processes


@contextmanager
def _spawned_server(target: Callable[[Connection], None]) -> Iterator[tuple[Connection, Any]]:
    """Start `target(pipe)` in a fresh interpreter; yield the pipe and its first message.

    The server is killed on leaving the block, whatever happens. A server also exits by
    itself when the pipe closes, so it never outlives this process.
    """
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(target=target, args=(child_end,), daemon=True)
    process.start()
    child_end.close()
    try:
        try:
            if not parent_end.poll(SERVER_START_TIMEOUT):
                raise BenchmarkError(f"server did not start within {SERVER_START_TIMEOUT:g} s")
            hello = parent_end.recv()
        except (EOFError, OSError):
            process.join(1.0)
            raise BenchmarkError(f"server exited on start (exit code {process.exitcode})") from None
        yield parent_end, hello
    finally:
        process.kill()
        process.join()
        parent_end.close()


def _receive_command(control: Connection) -> str | None:
    """The parent's next command, or None once the parent is gone."""
    try:
        command = control.recv()
    except (EOFError, OSError):
        return None
    return str(command)


def _serve_freehold(control: Connection) -> None:
    """Server process: a Freehold node that answers PING and BENCH_DATA."""
    trio.run(_serve_freehold_until_told, control)


async def handle_bench_data(peer: Peer, request: Message) -> Message:
    """Answer BENCH_DATA with a BENCH_ACK carrying the payload's size."""
    if not isinstance(request, BenchData):
        raise TypeError(f"expected BenchData, got {type(request).__name__}")
    return BenchAck(len(request.data))


async def _serve_freehold_until_told(control: Connection) -> None:
    identity = Identity.generate(nacl.utils.random)
    profiler = cProfile.Profile()
    async with open_transport(
        identity,
        TcpLinkLayer(identity),
        listen_address=LOOPBACK,
        config=SERVER_CONFIG,
        handlers={BenchData: handle_bench_data},
    ) as transport:
        if transport.address is None:
            raise BenchmarkError("the server transport has no address")
        control.send((transport.address, identity.node_id.value))
        while True:
            command = await trio.to_thread.run_sync(
                _receive_command, control, abandon_on_cancel=True
            )
            if command is None:
                return
            # Commands are carried out on the trio thread: cProfile sees one thread.
            if command == "profile-start":
                profiler = cProfile.Profile()
                profiler.enable()
            elif command == "profile-stop":
                profiler.disable()
                summary = _profile_summary(profiler)
                await trio.to_thread.run_sync(control.send, summary)


def _exit_when_orphaned(control: Connection) -> None:
    while _receive_command(control) is not None:
        pass
    os._exit(0)


def _serve_baseline(control: Connection) -> None:
    """Server process: a blocking-socket server, one connection at a time."""
    listener = socket.create_server(LOOPBACK)
    host, port = listener.getsockname()[:2]
    control.send((str(host), int(port)))
    threading.Thread(target=_exit_when_orphaned, args=(control,), daemon=True).start()
    while True:
        connection, _ = listener.accept()
        with connection:
            _serve_baseline_connection(connection)


def _serve_baseline_connection(connection: socket.socket) -> None:
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = connection.makefile("rb", buffering=BASELINE_READ_BUFFER)
    while True:
        header = reader.read(LENGTH.size)
        if len(header) < LENGTH.size:
            return
        (length,) = LENGTH.unpack(header)
        payload = reader.read(length)
        if len(payload) < length:
            return
        reply = payload if length <= ECHO_LIMIT else ACK.pack(length)
        connection.sendall(LENGTH.pack(len(reply)) + reply)


def _serve_trio_echo(control: Connection) -> None:
    """Server process: the least a trio server can do per round trip (no crypto, no
    codec): wait until readable, read, write the bytes back."""
    listener = socket.create_server(LOOPBACK)
    host, port = listener.getsockname()[:2]
    control.send((str(host), int(port)))
    threading.Thread(target=_exit_when_orphaned, args=(control,), daemon=True).start()
    connection, _ = listener.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.setblocking(False)

    async def echo() -> None:
        while True:
            await trio.lowlevel.wait_readable(connection)
            data = connection.recv(BASELINE_READ_BUFFER)
            if not data:
                return
            connection.sendall(data)

    trio.run(echo)


async def _trio_floor_rate(address: tuple[str, int], seconds: float) -> float:
    """One-at-a-time round trips against `_serve_trio_echo`, with the client shaped like
    any multiplexing client: a reader task hands each answer to the waiting caller."""
    connection = socket.create_connection(address)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.setblocking(False)
    framed = LENGTH.pack(len(ROUND_TRIP_PAYLOAD)) + ROUND_TRIP_PAYLOAD
    waiting: list[trio.lowlevel.Task] = []

    async def read_answers() -> None:
        while True:
            await trio.lowlevel.wait_readable(connection)
            if not connection.recv(BASELINE_READ_BUFFER):
                return
            trio.lowlevel.reschedule(waiting.pop())

    def abort(_: object) -> trio.lowlevel.Abort:
        return trio.lowlevel.Abort.SUCCEEDED

    done = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_answers)
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            waiting.append(trio.lowlevel.current_task())
            connection.sendall(framed)
            await trio.lowlevel.wait_task_rescheduled(abort)
            done += 1
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    connection.close()
    return done / elapsed


# ---------------------------------------------------------------------- profiling


def _profile_summary(profiler: cProfile.Profile, limit: int = PROFILE_LINES) -> str:
    """The top functions by own time, then by cumulative time, as text."""
    profile = pstats.Stats(profiler).get_stats_profile()
    total = profile.total_tt or 1.0
    rows = list(profile.func_profiles.items())

    def describe(name: str, file_name: str, line: int) -> str:
        if file_name == "~":
            return name
        return f"{name} ({os.path.basename(file_name)}:{line})"

    lines = [f"profiled {profile.total_tt:.3f} s"]
    orders: tuple[tuple[str, Callable[[pstats.FunctionProfile], float]], ...] = (
        ("own time", lambda function: function.tottime),
        ("cumulative time", lambda function: function.cumtime),
    )
    for title, time_of in orders:
        lines.append(f"  top {limit} by {title}:")
        lines.append(f"  {'own s':>8} {'own %':>6} {'cum s':>8} {'calls':>12}  function")
        rows.sort(key=lambda item: time_of(item[1]), reverse=True)
        for name, function in rows[:limit]:
            lines.append(
                f"  {function.tottime:8.3f} {100 * function.tottime / total:5.1f}% "
                f"{function.cumtime:8.3f} {function.ncalls:>12}  "
                f"{describe(name, function.file_name, function.line_number)}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- Freehold client


@dataclass(frozen=True, slots=True)
class _FreeholdServer:
    address: tuple[str, int]
    node_id: NodeId


async def _rate(workers: int, seconds: float, operation: Callable[[], Awaitable[int]]) -> float:
    """Units per second of `workers` tasks each repeating `operation` for `seconds`."""
    done = 0
    start = trio.current_time()
    deadline = start + seconds

    async def work() -> None:
        nonlocal done
        while trio.current_time() < deadline:
            # Not `done += await operation()`: that reads `done` before the await and
            # loses the other workers' updates.
            units = await operation()
            done += units

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(work)
    return done / (trio.current_time() - start)


def _freehold_operations(
    transport: Transport, server: _FreeholdServer
) -> dict[Metric, tuple[int, Callable[[], Awaitable[int]]]]:
    """Each metric's worker count and operation (which returns the units it did)."""
    bulk = BenchData(nacl.utils.random(BULK_MESSAGE_SIZE))
    ping = Ping(ROUND_TRIP_PAYLOAD)

    async def send_bulk() -> int:
        answer = await transport.request(server.address, bulk, node_id=server.node_id)
        if not isinstance(answer, BenchAck) or answer.size != BULK_MESSAGE_SIZE:
            raise BenchmarkError(f"server answered BENCH_DATA with {answer!r}")
        return BULK_MESSAGE_SIZE

    async def round_trip() -> int:
        answer = await transport.request(server.address, ping, node_id=server.node_id)
        if not isinstance(answer, Pong) or answer.nonce != ROUND_TRIP_PAYLOAD:
            raise BenchmarkError(f"server answered PING with {answer!r}")
        return 1

    return {
        BULK: (BULK_IN_FLIGHT, send_bulk),
        ONE_AT_A_TIME: (1, round_trip),
        PIPELINED: (PIPELINE_DEPTH, round_trip),
    }


async def _measure_freehold(
    server: _FreeholdServer, control: Connection, durations: Durations, profile: bool
) -> tuple[dict[Metric, float], list[str]]:
    """Each metric's raw rate (bytes/s or round trips/s), and profiles if asked."""
    identity = Identity.generate(nacl.utils.random)
    rates: dict[Metric, float] = {}
    profiles: list[str] = []
    async with open_transport(identity, TcpLinkLayer(identity), config=CLIENT_CONFIG) as transport:
        operations = _freehold_operations(transport, server)
        for metric in METRICS:
            workers, operation = operations[metric]
            await _rate(workers, durations.warmup, operation)
            if not profile:
                rates[metric] = await _rate(workers, durations.of(metric), operation)
                continue
            await trio.to_thread.run_sync(control.send, "profile-start")
            profiler = cProfile.Profile()
            profiler.enable()
            rates[metric] = await _rate(workers, durations.of(metric), operation)
            profiler.disable()
            await trio.to_thread.run_sync(control.send, "profile-stop")
            server_summary = await trio.to_thread.run_sync(control.recv)
            profiles.append(f"== client, {metric.label}: {_profile_summary(profiler)}")
            profiles.append(f"== server, {metric.label}: {server_summary}")
    return rates, profiles


# ---------------------------------------------------------------- baseline client


class _BlockingClient:
    """The baseline's client: length-prefixed messages on one blocking socket."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._socket = socket.create_connection(address)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self._socket.makefile("rb", buffering=BASELINE_READ_BUFFER)

    def send(self, framed: bytes) -> None:
        self._socket.sendall(framed)

    def receive(self) -> bytes:
        header = self._reader.read(LENGTH.size)
        if len(header) < LENGTH.size:
            raise BenchmarkError("baseline server closed the connection")
        (length,) = LENGTH.unpack(header)
        payload: bytes = self._reader.read(length)
        if len(payload) < length:
            raise BenchmarkError("baseline server closed the connection")
        return payload

    def close(self) -> None:
        self._reader.close()
        self._socket.close()


def _pipelined_rate(
    client: _BlockingClient, framed: bytes, expected: bytes, depth: int, seconds: float
) -> float:
    """Replies per second with up to `depth` requests outstanding for `seconds`."""
    start = time.perf_counter()
    deadline = start + seconds
    outstanding = 0
    done = 0
    while outstanding < depth:
        client.send(framed)
        outstanding += 1
    while outstanding:
        reply = client.receive()
        if reply != expected:
            raise BenchmarkError(f"baseline server answered {reply[:16]!r}")
        outstanding -= 1
        done += 1
        if time.perf_counter() < deadline:
            client.send(framed)
            outstanding += 1
    return done / (time.perf_counter() - start)


def _measure_baseline(address: tuple[str, int], durations: Durations) -> dict[Metric, float]:
    """Each metric's raw rate (bytes/s or round trips/s) over plain blocking sockets."""
    bulk = nacl.utils.random(BULK_MESSAGE_SIZE)
    bulk_framed = LENGTH.pack(len(bulk)) + bulk
    echo_framed = LENGTH.pack(len(ROUND_TRIP_PAYLOAD)) + ROUND_TRIP_PAYLOAD
    shapes = {
        BULK: (bulk_framed, ACK.pack(BULK_MESSAGE_SIZE), BULK_IN_FLIGHT, BULK_MESSAGE_SIZE),
        ONE_AT_A_TIME: (echo_framed, ROUND_TRIP_PAYLOAD, 1, 1),
        PIPELINED: (echo_framed, ROUND_TRIP_PAYLOAD, PIPELINE_DEPTH, 1),
    }
    client = _BlockingClient(address)
    rates: dict[Metric, float] = {}
    try:
        for metric in METRICS:
            framed, expected, depth, units = shapes[metric]
            _pipelined_rate(client, framed, expected, depth, durations.warmup)
            rate = _pipelined_rate(client, framed, expected, depth, durations.of(metric))
            rates[metric] = rate * units
    finally:
        client.close()
    return rates


# ------------------------------------------------------------------------- report


def _in_unit(metric: Metric, rate: float) -> float:
    return rate / 1e6 if metric is BULK else rate


def _report(
    freehold: dict[Metric, float],
    baseline: dict[Metric, float],
    trio_floor: float,
    options: BenchmarkOptions,
) -> None:
    run = "quick run, rough figures" if options.quick else "full run"
    if options.profile:
        run += "; PROFILED, figures skewed"
    print(f"transport: TCP loopback 127.0.0.1, client and server in two processes ({run})")
    print(
        "baseline: blocking sockets, 4-byte length prefix; bulk answers every 1 MiB message "
        f"with an 8-byte ack, {BULK_IN_FLIGHT} in flight; round trips echo 8 bytes"
    )
    print("MB = 10**6 bytes")
    print()
    header = (
        f"{'metric':<36} {'unit':<5} {'freehold':>10} {'baseline':>10} "
        f"{'ratio':>6} {'target':>8}  result"
    )
    print(header)
    print("-" * len(header))
    records = []
    for metric in METRICS:
        ours = _in_unit(metric, freehold[metric])
        theirs = _in_unit(metric, baseline[metric])
        ratio = ours / theirs if theirs else 0.0
        met = ours >= metric.target
        print(
            f"{metric.label:<36} {metric.unit:<5} {ours:>10.1f} {theirs:>10.1f} "
            f"{ratio:>6.2f} {metric.target:>8g}  {'pass' if met else 'miss'}"
        )
        records.append(
            {
                "benchmark": "transport",
                "metric": metric.name,
                "unit": metric.unit,
                "freehold": round(ours, 1),
                "baseline": round(theirs, 1),
                "ratio": round(ratio, 3),
                "target": metric.target,
                "met": met,
                "quick": options.quick,
                "profiled": options.profile,
            }
        )
    print()
    print(
        "reference: trio floor, 1 at a time (8-byte echo, trio at both ends, a reader task "
        f"on the client, no Noise, no codec): {trio_floor:.1f} rt/s; freehold reaches "
        f"{freehold[ONE_AT_A_TIME] / trio_floor:.2f} of it"
    )
    print()
    for record in records:
        print(json.dumps(record))
    print(
        json.dumps(
            {
                "benchmark": "transport",
                "metric": "trio_floor_round_trips_per_s_1_in_flight",
                "unit": "rt/s",
                "reference": round(trio_floor, 1),
                "freehold": round(freehold[ONE_AT_A_TIME], 1),
                "ratio": round(freehold[ONE_AT_A_TIME] / trio_floor, 3),
                "quick": options.quick,
                "profiled": options.profile,
            }
        )
    )


def run_transport_benchmark(options: BenchmarkOptions) -> None:
    """Measure Freehold and the baseline, then print the table and the JSON lines."""
    durations = QUICK_RUN if options.quick else FULL_RUN
    with _spawned_server(_serve_freehold) as (control, hello):
        address, node_id = hello
        server = _FreeholdServer((str(address[0]), int(address[1])), NodeId(bytes(node_id)))
        freehold, profiles = trio.run(
            _measure_freehold, server, control, durations, options.profile
        )
    with _spawned_server(_serve_baseline) as (_, baseline_address):
        baseline = _measure_baseline(baseline_address, durations)
    with _spawned_server(_serve_trio_echo) as (_, echo_address):
        trio.run(_trio_floor_rate, echo_address, durations.warmup)  # warm-up connection
    with _spawned_server(_serve_trio_echo) as (_, echo_address):
        trio_floor = trio.run(_trio_floor_rate, echo_address, durations.round_trips)
    for profile in profiles:
        print(profile)
        print()
    _report(freehold, baseline, trio_floor, options)
