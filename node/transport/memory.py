"""An in-memory network for tests and simulations: seeded latency, loss and partitions.

Every node gets a `MemoryLinkLayer` on one shared `MemoryNetwork`. Links carry whole
frames in memory (node.transport.memory_link); nothing touches a socket, so thousands of
nodes fit in one process and run under trio's MockClock.

The model, all of it reproducible from the seed:
- latency: each unordered pair of hosts has a fixed one-way latency drawn uniformly in
  [min_latency, max_latency] from a hash of (seed, pair), so adding a node does not
  change the latency of the others. Frames on one link keep their order.
- loss: each frame on an established link is dropped with probability `loss` (the
  network's seeded RNG). Handshake messages are never lost, as TCP resends them.
- partitions: hosts in different groups cannot reach each other. Frames between them
  vanish and dials hang (the caller's handshake timeout ends them), as on a real
  network that has gone silent; `heal()` ends the partition.

Two ways to authenticate, chosen per network (`MemoryNetwork(secure=...)`):
- `secure=False` (the default, for tests): by construction. The network knows which
  identity listens where, so the handshake costs one round trip of virtual time and no
  cryptography. Dialling an address whose node is not the expected one fails like the
  TCP handshake does.
- `secure=True` (for simulations that must run the whole protocol stack): the channel
  of node.transport.tcp, handshake and all; node.transport.memory_link says how it runs
  here.

`MemoryNetwork(intercept=...)` is a test hook: it sees and may replace every message
as it leaves its sender (frames, or handshake messages and Noise records when secure).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable

import nacl.utils
import trio

from node.errors import LinkClosed
from node.transport.config import TransportConfig
from node.transport.link import (
    Address,
    Link,
    LinkLayer,
    LinkListener,
    PendingLink,
)
from node.transport.memory_link import (
    LINK_BUFFER_FRAMES,
    MemoryLink,
    Pipe,
    SecureMemoryLink,
    TimedFrame,
    run_handshake,
)
from protocol.handshake import SecureHandshake
from protocol.identity import Identity, NodeId, RandomBytes, meets_difficulty

__all__ = ["Intercept", "MemoryLinkLayer", "MemoryNetwork"]

# Inbound connections waiting for accept() before new dials are refused.
ACCEPT_BACKLOG = 128

# The test hook: intercept(source host, destination host, message) -> what arrives.
Intercept = Callable[[str, str, bytes], bytes]


class MemoryNetwork:
    """The shared medium. Create one per test or simulation."""

    def __init__(
        self,
        *,
        seed: int = 0,
        min_latency: float = 0.0,
        max_latency: float = 0.0,
        loss: float = 0.0,
        secure: bool = False,
        intercept: Intercept | None = None,
    ) -> None:
        """`secure` runs the real secure channel on every link (see the module
        docstring); `intercept` is the test hook that sees every message sent."""
        if not 0 <= min_latency <= max_latency or not math.isfinite(max_latency):
            raise ValueError("need 0 <= min_latency <= max_latency")
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss is a probability in [0, 1)")
        self.seed = seed
        self.min_latency = min_latency
        self.max_latency = max_latency
        self.loss = loss
        self.secure = secure
        self._intercept = intercept
        self._rng = random.Random(seed)
        self._listeners: dict[Address, MemoryListener] = {}
        self._groups: dict[str, int] | None = None
        self._ports: dict[str, int] = {}
        self.frames_dropped = 0

    def link_layer(
        self, identity: Identity, host: str, *, random_bytes: RandomBytes = nacl.utils.random
    ) -> MemoryLinkLayer:
        """The link layer of the node with `identity`, reachable at host `host`.
        `random_bytes` draws its Noise keys on a secure network (unused otherwise)."""
        return MemoryLinkLayer(self, identity, host, random_bytes=random_bytes)

    def latency(self, host_a: str, host_b: str) -> float:
        """The one-way latency between two hosts (fixed per pair for this seed)."""
        if self.max_latency == self.min_latency:
            return self.min_latency
        first, second = sorted((host_a, host_b))
        digest = hashlib.blake2b(
            f"{self.seed}\0{first}\0{second}".encode(errors="surrogatepass"), digest_size=8
        ).digest()
        fraction = int.from_bytes(digest, "big") / 2**64
        return self.min_latency + fraction * (self.max_latency - self.min_latency)

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the hosts into groups that cannot reach each other. Hosts named in no
        group form one more group together."""
        assignment: dict[str, int] = {}
        for number, group in enumerate(groups, start=1):
            for host in group:
                assignment[host] = number
        self._groups = assignment

    def heal(self) -> None:
        """End any partition."""
        self._groups = None

    def can_reach(self, host_a: str, host_b: str) -> bool:
        if self._groups is None:
            return True
        return self._groups.get(host_a, 0) == self._groups.get(host_b, 0)

    def _lose_frame(self) -> bool:
        if self.loss and self._rng.random() < self.loss:
            self.frames_dropped += 1
            return True
        return False

    def _bind(self, address: Address, listener: MemoryListener) -> Address:
        host, port = address
        if port == 0:
            port = self._ports.get(host, 1023) + 1
            while (host, port) in self._listeners:
                port += 1
            self._ports[host] = port
        if (host, port) in self._listeners:
            raise OSError(f"address {host}:{port} is in use")
        self._listeners[(host, port)] = listener
        return (host, port)

    def _unbind(self, address: Address) -> None:
        self._listeners.pop(address, None)


class MemoryPendingLink(PendingLink):
    """The listener's end before it accepts; the dialer waits for the verdict, as a TCP
    dialer waits for the handshake the listener may refuse."""

    def __init__(self, link: MemoryLink, config: TransportConfig) -> None:
        self.remote_address = link.remote_address
        self._link = link
        self._config = config
        self.accepted = False
        self.decided = trio.Event()

    async def handshake(self) -> Link:
        # The dialer spends the handshake's round trip; the responder checks the
        # dialer's proof of work, as the real handshake does.
        if not meets_difficulty(self._link.remote_node_id, self._config.id_difficulty):
            self.decided.set()
            raise LinkClosed(
                f"{self._link.remote_node_id.short()} has no proof of work", misbehaved=True
            )
        self.accepted = True
        self.decided.set()
        await trio.lowlevel.checkpoint()
        return self._link

    async def aclose(self) -> None:
        self.decided.set()
        await self._link.aclose()


class SecureMemoryPendingLink(PendingLink):
    """The listener's end of a secure link: its message 1 is on the way or there."""

    def __init__(
        self, link: SecureMemoryLink, layer: MemoryLinkLayer, config: TransportConfig
    ) -> None:
        self.remote_address = link.remote_address
        self._link = link
        self._layer = layer
        self._config = config

    async def handshake(self) -> Link:
        handshake = self._layer._new_handshake(self._config, initiator=False, expected_node_id=None)
        try:
            await run_handshake(self._link, handshake)
        except BaseException:
            self._link._close("handshake abandoned")
            raise
        return self._link

    async def aclose(self) -> None:
        await self._link.aclose()


class MemoryListener(LinkListener):
    def __init__(self, layer: MemoryLinkLayer, address: Address, config: TransportConfig) -> None:
        self._layer = layer
        self.config = config
        self.address = layer.network._bind(address, self)
        self._send, self._receive = trio.open_memory_channel[PendingLink](ACCEPT_BACKLOG)

    @property
    def node_id(self) -> NodeId:
        return self._layer.identity.node_id

    def _offer(self, pending: PendingLink) -> bool:
        try:
            self._send.send_nowait(pending)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def accept(self) -> PendingLink:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener is closed") from None

    async def aclose(self) -> None:
        self._layer.network._unbind(self.address)
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class MemoryLinkLayer(LinkLayer):
    """A node's attachment to a `MemoryNetwork`."""

    def __init__(
        self,
        network: MemoryNetwork,
        identity: Identity,
        host: str,
        *,
        random_bytes: RandomBytes = nacl.utils.random,
    ) -> None:
        self.network = network
        self.identity = identity
        self.host = host
        self._random_bytes = random_bytes

    def _new_handshake(
        self, config: TransportConfig, *, initiator: bool, expected_node_id: NodeId | None
    ) -> SecureHandshake:
        return SecureHandshake.fresh(
            self.identity,
            self._random_bytes,
            initiator=initiator,
            expected_node_id=expected_node_id,
            difficulty=config.id_difficulty,
        )

    async def open_listener(self, address: Address, config: TransportConfig) -> LinkListener:
        host, port = address
        if host != self.host:
            raise OSError(f"cannot bind {host}: this node's host is {self.host}")
        return MemoryListener(self, (host, port), config)

    async def connect(
        self, address: Address, expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        network = self.network
        remote_host = address[0]
        if not network.can_reach(self.host, remote_host):
            await trio.sleep_forever()  # silence, like a partitioned real network
        if network.secure:
            return await self._connect_secure(address, expected_node_id, config)
        latency = network.latency(self.host, remote_host)
        await trio.sleep(latency)  # our first handshake message reaches the listener
        listener = network._listeners.get(address)
        if listener is None:
            raise LinkClosed(f"connection refused by {address[0]}:{address[1]}")
        if expected_node_id is not None and listener.node_id != expected_node_id:
            await trio.sleep(latency)  # its answer shows who it is
            raise LinkClosed(
                f"{address[0]}:{address[1]} is {listener.node_id.short()}, "
                f"not the expected {expected_node_id.short()}"
            )
        to_remote, from_local = trio.open_memory_channel[TimedFrame](LINK_BUFFER_FRAMES)
        to_local, from_remote = trio.open_memory_channel[TimedFrame](LINK_BUFFER_FRAMES)
        local_address = (self.host, 0)
        ours = MemoryLink(
            network,
            self.host,
            listener.node_id,
            address,
            to_remote,
            from_remote,
            config,
        )
        theirs = MemoryLink(
            network,
            remote_host,
            self.identity.node_id,
            local_address,
            to_local,
            from_local,
            listener.config,
        )
        if not meets_difficulty(listener.node_id, config.id_difficulty):
            await trio.sleep(latency)  # its answer shows who it is
            raise LinkClosed(f"{listener.node_id.short()} has no proof of work", misbehaved=True)
        pending = MemoryPendingLink(theirs, listener.config)
        if not listener._offer(pending):
            raise LinkClosed(f"{address[0]}:{address[1]} refused the connection (backlog full)")
        try:
            await pending.decided.wait()
            if not pending.accepted:
                raise LinkClosed(
                    f"{address[0]}:{address[1]} closed the connection in the handshake"
                )
            await trio.sleep(latency)  # the rest of the handshake
        except BaseException:
            # Given up (or refused): the listener's end must not stay half open.
            with trio.CancelScope(shield=True):
                await ours.aclose()
                await theirs.aclose()
            raise
        return ours

    async def _connect_secure(
        self, address: Address, expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        network = self.network
        handshake = self._new_handshake(config, initiator=True, expected_node_id=expected_node_id)
        outbound, inbound = Pipe(), Pipe()
        ours = SecureMemoryLink(network, self.host, address, outbound, inbound, config)
        try:
            ours._send_handshake_message(handshake.start())
            await trio.sleep(ours._latency)  # message 1 reaches the listener
            listener = network._listeners.get(address)
            if listener is None:
                raise LinkClosed(f"connection refused by {address[0]}:{address[1]}")
            theirs = SecureMemoryLink(
                network, address[0], (self.host, 0), inbound, outbound, listener.config
            )
            pending = SecureMemoryPendingLink(theirs, listener._layer, listener.config)
            if not listener._offer(pending):
                raise LinkClosed(f"{address[0]}:{address[1]} refused the connection (backlog full)")
            await run_handshake(ours, handshake)
        except BaseException:
            # Given up, refused or failed: the listener sees the connection close, as
            # over TCP (its handshake, if it runs one, ends on it).
            ours._close("closed")
            raise
        return ours
