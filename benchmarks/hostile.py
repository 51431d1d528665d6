"""Hostile-peer benchmark: a real node's memory under the attacks of issue 18's rows 1 and 4.

Method, in one run on this machine: one `freehold node` process on 127.0.0.1 (a
testnet of one, `id_difficulty = 8` in its config.toml so that throwaway ids are
refused as on a real network, which asks for 20 bits) and this process as the
attackers, all over real TCP and the real Noise handshake:

| attack                | what the attackers do                                          |
|-----------------------|----------------------------------------------------------------|
| identities (row 1)    | 512 fresh identities without the proof of work, 64 at a time,  |
|                       | each a full handshake and a PING                               |
| partial frames (4)    | 20 identities with the work each announce a maximum frame and  |
|                       | send all of it but its last byte, and hold the connection      |
| unread answers (4)    | 8 identities each ask for 64 chunks of 1 MiB (in waves of 8,   |
|                       | its chunk-job limit) and never read an answer                  |

After each attack: the node's RSS (VmRSS from /proc) while the attackers hold on, and
whether an honest newcomer (an identity with the work) is answered at once. At the end
the node's peak RSS (VmHWM) over the whole run.

Baseline in the same run: the same node's RSS idle, before any attack. The stated
bound is that idle RSS plus the node's budgets (node/transport/budget.py): the receive
budget (32 MiB), the answer backlog (32 MiB), and the chunk jobs that may be running
when the backlog fills (16 of the largest chunk sent here). Before issue 18's budgets,
the issue measured 82.5 MiB pinned by the partial frames of 20 peers and about 60 MiB
per identity by unread answers (8 identities: about 480 MiB).

Every socket stays on 127.0.0.1; the node's data directory is a temporary one.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import struct
import tempfile
import time
from pathlib import Path
from typing import Final

import trio

from benchmarks import BenchmarkError, BenchmarkOptions
from node.testnet import open_testnet, read_address
from node.transport.config import TransportConfig
from protocol.chunk import GroupRecord, chunk_id
from protocol.handshake import SecureHandshake
from protocol.identity import Identity, meets_difficulty
from protocol.messages import (
    DEFAULT_MAX_FRAME_SIZE,
    Envelope,
    FetchChunk,
    Kind,
    Ping,
    StoreChunk,
    decode_envelope,
    encode_envelope,
)
from protocol.noise import MAX_PLAINTEXT_SIZE, TransportState

__all__ = ["run_hostile_benchmark"]

MiB: Final = 1024 * 1024
DIFFICULTY: Final = 8
THROWAWAY: Final = 512
QUICK_THROWAWAY: Final = 128
AT_ONCE: Final = 64
PARTIAL_PEERS: Final = 20
READERS_NOT: Final = 8
QUICK_READERS_NOT: Final = 3
CHUNKS: Final = 8
CHUNK_SIZE: Final = 1 * MiB
RECORD: Final = struct.Struct(">H")
FRAME: Final = struct.Struct(">I")
SETTLE: Final = 2.0


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise BenchmarkError(f"no {field} for process {pid}")


class _Peer:
    """One attacking (or honest) identity's raw connection to the node."""

    def __init__(self, stream: trio.SocketStream, noise: TransportState) -> None:
        self.stream = stream
        self.noise = noise
        self.buffer = bytearray()
        self.plain = bytearray()

    async def send_plain(self, plaintext: bytes) -> None:
        out = bytearray()
        for start in range(0, len(plaintext), MAX_PLAINTEXT_SIZE):
            record = self.noise.encrypt(plaintext[start : start + MAX_PLAINTEXT_SIZE])
            out += RECORD.pack(len(record)) + record
        await self.stream.send_all(bytes(out))

    async def request(self, number: int, message: object) -> None:
        frame = encode_envelope(Envelope(Kind.REQUEST, number, message))  # type: ignore[arg-type]
        await self.send_plain(FRAME.pack(len(frame)) + frame)

    async def answer(self) -> object:
        """The next frame's message (raises EOFError if the node closed)."""
        while True:
            if len(self.plain) >= FRAME.size:
                (length,) = FRAME.unpack_from(self.plain)
                if len(self.plain) >= FRAME.size + length:
                    frame = bytes(self.plain[FRAME.size : FRAME.size + length])
                    del self.plain[: FRAME.size + length]
                    return decode_envelope(frame).message
            self.plain += self.noise.decrypt(await _read_record(self.stream, self.buffer))


async def _read_record(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    while len(buffer) < 2 or len(buffer) < 2 + RECORD.unpack_from(buffer)[0]:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            raise EOFError("the node closed the connection")
        buffer += data
    (length,) = RECORD.unpack_from(buffer)
    record = bytes(buffer[2 : 2 + length])
    del buffer[: 2 + length]
    return record


async def _connect(
    address: tuple[str, int], identity: Identity, rng: random.Random, *, receive_buffer: int = 0
) -> _Peer:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(address)
    stream = trio.SocketStream(sock)
    handshake = SecureHandshake.fresh(identity, rng.randbytes, initiator=True)
    buffer = bytearray()
    message = handshake.start()
    await stream.send_all(RECORD.pack(len(message)) + message)
    reply = handshake.receive(await _read_record(stream, buffer))
    assert reply is not None
    await stream.send_all(RECORD.pack(len(reply)) + reply)
    peer = _Peer(stream, handshake.transport())
    peer.buffer = buffer
    return peer


async def _honest_ping(address: tuple[str, int], rng: random.Random) -> float:
    """Seconds for a newcomer with the work to connect and get a PONG."""
    started = trio.current_time()
    identity = Identity.generate(rng.randbytes, difficulty=DIFFICULTY)
    with trio.fail_after(10):
        peer = await _connect(address, identity, rng)
        await peer.request(1, Ping(b"honest"))
        await peer.answer()
    await peer.stream.aclose()
    return trio.current_time() - started


async def _attack_identities(
    address: tuple[str, int], rng: random.Random, count: int
) -> tuple[int, int]:
    """`count` throwaway identities each try a handshake and a PING: (served, refused)."""
    served = refused = 0

    async def one() -> None:
        nonlocal served, refused
        while True:
            identity = Identity(rng.randbytes(32))
            if not meets_difficulty(identity.node_id, DIFFICULTY):
                break
        try:
            with trio.fail_after(15):
                peer = await _connect(address, identity, rng)
                await peer.request(1, Ping(b"sybil"))
                await peer.answer()
            served += 1
            await peer.stream.aclose()
        except Exception:  # closed, reset, refused or too slow: not served
            refused += 1

    for start in range(0, count, AT_ONCE):
        async with trio.open_nursery() as nursery:
            for _ in range(min(AT_ONCE, count - start)):
                nursery.start_soon(one)
    return served, refused


async def _send_quietly(peer: _Peer, plaintext: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await peer.send_plain(plaintext)


async def _hostile(
    pid: int, address: tuple[str, int], options: BenchmarkOptions
) -> dict[str, object]:
    rng = random.Random(18)
    results: dict[str, object] = {}
    await trio.sleep(SETTLE)
    results["idle_mib"] = _rss_mib(pid)

    # Row 1: throwaway identities.
    count = QUICK_THROWAWAY if options.quick else THROWAWAY
    served, refused = await _attack_identities(address, rng, count)
    results["identities"] = {
        "tried": count,
        "served": served,
        "refused": refused,
        "rss_mib": _rss_mib(pid),
        "newcomer_s": await _honest_ping(address, rng),
    }

    # Row 4: partial frames from peers with the work.
    partial: list[_Peer] = []
    announced = DEFAULT_MAX_FRAME_SIZE
    async with trio.open_nursery() as nursery:
        for _ in range(PARTIAL_PEERS):
            identity = Identity.generate(rng.randbytes, difficulty=DIFFICULTY)
            peer = await _connect(address, identity, rng)
            partial.append(peer)
            head = encode_envelope(Envelope(Kind.REQUEST, 1, Ping(b"x")))
            body = FRAME.pack(announced) + head + bytes(announced - len(head) - 1)
            nursery.start_soon(_send_quietly, peer, body)
        await trio.sleep(SETTLE * 2)
        results["partial_frames"] = {
            "peers": PARTIAL_PEERS,
            "announced_mib": PARTIAL_PEERS * announced / MiB,
            "rss_mib": _rss_mib(pid),
            "newcomer_s": await _honest_ping(address, rng),
        }
        for peer in partial:
            await peer.stream.aclose()
        nursery.cancel_scope.cancel()
    await trio.sleep(SETTLE)

    # Row 4: unread answers. One identity stores the chunks first.
    owner = await _connect(address, Identity.generate(rng.randbytes, difficulty=DIFFICULTY), rng)
    ids = []
    for number in range(CHUNKS):
        data = rng.randbytes(CHUNK_SIZE)
        ids.append(chunk_id(data))
        await owner.request(number, StoreChunk(GroupRecord(1, 1, 0, (ids[-1],)), data))
        answer = await owner.answer()
        if type(answer).__name__ != "ChunkStored":
            raise BenchmarkError(f"the node did not store a chunk: {answer!r}")
    await owner.stream.aclose()
    readers = QUICK_READERS_NOT if options.quick else READERS_NOT
    hogs = []
    for _ in range(readers):
        identity = Identity.generate(rng.randbytes, difficulty=DIFFICULTY)
        hogs.append(await _connect(address, identity, rng, receive_buffer=4096))
    for wave in range(8):
        for hog in hogs:
            for number in range(8 * wave, 8 * wave + 8):
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await hog.request(number, FetchChunk(ids[number % CHUNKS]))
        await trio.sleep(0.5)
    await trio.sleep(SETTLE)
    results["unread_answers"] = {
        "peers": readers,
        "requests": readers * 64,
        "rss_mib": _rss_mib(pid),
        "newcomer_s": await _honest_ping(address, rng),
    }
    for hog in hogs:
        await hog.stream.aclose()
    await trio.sleep(SETTLE)
    results["peak_mib"] = _rss_mib(pid, "VmHWM")
    return results


def run_hostile_benchmark(options: BenchmarkOptions) -> None:
    config = TransportConfig()
    with tempfile.TemporaryDirectory(prefix="freehold-hostile-") as temp:
        directory = Path(temp)
        data_dir = directory / "node-00"
        data_dir.mkdir(mode=0o700)
        (data_dir / "config.toml").write_text(f"id_difficulty = {DIFFICULTY}\n")
        started = time.perf_counter()
        with open_testnet(1, directory, extra=["--capacity", "1GiB"]) as testnet:
            node = testnet.nodes[0]
            text = read_address(node.data_dir)
            if text is None:
                raise BenchmarkError("the node did not say where it listens")
            host, port = text.rsplit(":", 1)
            results = trio.run(_hostile, node.process.pid, (host, int(port)), options)
    idle = float(results["idle_mib"])  # type: ignore[arg-type]
    bound = (
        idle + (config.max_receive_buffer + config.max_answer_backlog) / MiB + 16 * CHUNK_SIZE / MiB
    )
    print(f"one node on 127.0.0.1, id_difficulty {DIFFICULTY}; idle RSS {idle:.1f} MiB (baseline)")
    print(f"{'attack':<16} {'RSS MiB':>8} {'x idle':>7} {'newcomer s':>11}  detail")
    for name, detail in (
        ("identities", results["identities"]),
        ("partial_frames", results["partial_frames"]),
        ("unread_answers", results["unread_answers"]),
    ):
        assert isinstance(detail, dict)
        rss = float(detail["rss_mib"])
        rest = {k: v for k, v in detail.items() if k not in ("rss_mib", "newcomer_s")}
        print(
            f"{name:<16} {rss:>8.1f} {rss / idle:>7.2f} {float(detail['newcomer_s']):>11.2f}  "
            f"{rest}"
        )
    peak = float(results["peak_mib"])  # type: ignore[arg-type]
    print(
        f"peak RSS {peak:.1f} MiB over the run ({peak / idle:.2f}x idle); stated bound "
        f"{bound:.0f} MiB (idle + 32 MiB receive + 32 MiB answers + 16 chunk jobs): "
        f"{'within' if peak <= bound else 'OVER'}; {time.perf_counter() - started:.0f} s"
    )
    print(json.dumps({"benchmark": "hostile", **results, "bound_mib": bound}))
