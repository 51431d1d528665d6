"""One fixture, three networks: every test here runs over TCP loopback, in memory, and in
memory with the real secure channel (`MemoryNetwork(secure=True)`: Noise handshake and
encrypted frames, as over TCP).

Time is trio's MockClock in all. In memory the clock jumps as soon as every task is
blocked, so timeouts land on exact virtual times. Over TCP, tasks also block waiting
for the kernel, so the clock only jumps once everything has been blocked for
TCP_AUTOJUMP real seconds: loopback I/O finishes long before that, while a timeout
that is meant to fire still fires without a real wait of its full length.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import pytest
from trio.testing import MockClock

from node.transport import (
    Handler,
    LinkLayer,
    MemoryNetwork,
    TcpLinkLayer,
    Transport,
    TransportConfig,
    open_transport,
)
from protocol.identity import Identity
from protocol.messages import Message

TCP_AUTOJUMP = 0.3


def seeded_identity(rng: random.Random) -> Identity:
    return Identity.generate(lambda size: rng.randbytes(size))


@dataclass
class Network:
    """Makes nodes on one network of the kind under test."""

    kind: str
    rng: random.Random
    memory: MemoryNetwork | None = None
    count: int = 0

    def link_layer(self, identity: Identity) -> tuple[LinkLayer, tuple[str, int]]:
        self.count += 1
        if self.memory is not None:
            host = f"node-{self.count}"
            layer = self.memory.link_layer(identity, host, random_bytes=self.rng.randbytes)
            return layer, (host, 0)
        return TcpLinkLayer(identity, random_bytes=self.rng.randbytes), ("127.0.0.1", 0)

    def node(
        self,
        *,
        config: TransportConfig | None = None,
        handlers: Mapping[type[Message], Handler] | None = None,
        identity: Identity | None = None,
    ) -> AbstractAsyncContextManager[Transport]:
        identity = identity or seeded_identity(self.rng)
        link_layer, address = self.link_layer(identity)
        return open_transport(
            identity, link_layer, listen_address=address, config=config, handlers=handlers
        )


MEMORY_KINDS = ("memory", "memory-secure")


@pytest.fixture(params=[*MEMORY_KINDS, "tcp"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> MockClock:
    return MockClock(autojump_threshold=0 if kind in MEMORY_KINDS else TCP_AUTOJUMP)


@pytest.fixture
def network(kind: str, clock: MockClock) -> Network:
    rng = random.Random(20261127)
    if kind in MEMORY_KINDS:
        memory = MemoryNetwork(
            seed=1, min_latency=0.01, max_latency=0.05, secure=kind == "memory-secure"
        )
        return Network(kind, rng, memory)
    return Network(kind, rng)
