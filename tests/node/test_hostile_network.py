"""A real node (TCP on loopback, the real handshake) against peers that lie in their
DHT answers: the rows of issue 18 that need a whole node rather than a transport."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from node.config import NodeConfig
from node.errors import LinkClosed
from node.node import Node
from node.transport import TcpLinkLayer, Transport, TransportConfig, open_transport
from node.transport.handler import Peer
from node.transport.link import Address, Link
from protocol.identity import Identity, NodeId
from protocol.messages import FindNode, Message, Nodes, WireContact

from .transport.conftest import TCP_AUTOJUMP, seeded_identity


class RecordingTcp(TcpLinkLayer):
    """TCP that records every address the node dials, and goes nowhere but loopback
    (were the dial policy broken, a test must still send nothing elsewhere)."""

    def __init__(self, identity: Identity, rng: random.Random) -> None:
        super().__init__(identity, random_bytes=rng.randbytes)
        self.dialled: list[Address] = []

    async def connect(
        self, address: Address, expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        self.dialled.append(address)
        if not address[0].startswith("127."):
            raise LinkClosed(f"this test dials only loopback, not {address[0]}")
        return await super().connect(address, expected_node_id, config)


@asynccontextmanager
async def liar(rng: random.Random, contacts: list[WireContact]) -> AsyncIterator[Transport]:
    """A peer on 127.0.0.1 that answers every FIND_NODE with `contacts`."""

    def answer(peer: Peer, message: Message) -> Message:
        return Nodes(tuple(contacts))

    identity = seeded_identity(rng)
    async with open_transport(
        identity,
        TcpLinkLayer(identity, random_bytes=rng.randbytes),
        listen_address=("127.0.0.1", 0),
        handlers={FindNode: answer},
    ) as transport:
        yield transport


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=TCP_AUTOJUMP)


async def test_a_node_dials_no_name_and_no_address_it_was_merely_told(
    clock: MockClock, tmp_path: Path
) -> None:
    """Row 5 of issue 18, over TCP: a bootstrap peer answers the node's join lookup with
    host names, link-local, multicast and unspecified addresses, and with more
    loopback ports than k. The node resolves no name and dials none of those
    addresses; of the loopback ports (a loopback node may dial loopback) it dials at
    most k, and it keeps running."""
    rng = random.Random(11)
    banned = ["localhost", "evil.invalid", "169.254.1.1", "224.0.0.1", "0.0.0.0", "fe80::1"]
    contacts = [WireContact(rng.randbytes(32), host, 4410) for host in banned]
    contacts += [WireContact(rng.randbytes(32), "127.0.0.1", 1 + i) for i in range(26)]
    async with liar(rng, contacts) as bootstrap, trio.open_nursery() as nursery:
        assert bootstrap.address is not None
        identity = seeded_identity(rng)
        recording = RecordingTcp(identity, rng)
        config = NodeConfig(
            data_dir=tmp_path,
            listen=("127.0.0.1", 0),
            bootstrap=(bootstrap.address,),
            storage="memory",
            workers=0,
        )
        node = Node(config, identity=identity, link_layer=recording)
        await nursery.start(node.run)
        await trio.sleep(60)
        assert node.dht is not None
        hosts = {host for host, _ in recording.dialled}
        assert hosts == {"127.0.0.1"}, recording.dialled
        told = [address for address in recording.dialled if address != bootstrap.address]
        assert len(told) <= node.dht.config.k
        assert node.dht.refused_addresses >= len(banned)
        node.stop()
