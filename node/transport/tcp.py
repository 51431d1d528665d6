"""TCP links secured with the Noise XX handshake (docs/PROTOCOL.md#secure-channel).

`TcpLinkLayer` listens and dials over TCP, runs the handshake over a `RecordSocket`
(node.transport.record_socket) and hands over a `SecureLink`
(node.transport.secure_link), which carries the frames.

A dial that fails, whatever the address a peer gave, fails that dial only (LinkClosed
with the reason). A listener outlives the failure of any one inbound connection, and
when out of descriptors or memory it pauses between tries and says so once a minute.
"""

from __future__ import annotations

import errno
import logging
import math
import socket

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
from node.transport.record_socket import RECORD_HEADER, RecordSocket
from node.transport.secure_link import SecureLink
from protocol.errors import ProtocolError
from protocol.handshake import SecureHandshake
from protocol.identity import Identity, NodeId, RandomBytes

__all__ = ["TcpLinkLayer"]

logger = logging.getLogger(__name__)
LISTEN_BACKLOG = 128
# Pause after accept() fails for lack of descriptors or memory, and how often to say so.
ACCEPT_BACKOFF = 0.1
RESOURCE_WARNING_INTERVAL = 60.0
KEY_SIZE = 32


async def _run_handshake(
    records: RecordSocket,
    handshake: SecureHandshake,
    remote_address: Address,
    config: TransportConfig,
    first_message: bytes | None,
) -> SecureLink:
    try:
        if first_message is not None:
            await records.send_all([RECORD_HEADER.pack(len(first_message)), first_message])
        while not handshake.is_complete:
            reply = handshake.receive(await records.receive_record())
            if reply is not None:
                await records.send_all([RECORD_HEADER.pack(len(reply)), reply])
    except ProtocolError as exc:
        raise LinkClosed(f"handshake failed: {exc}", misbehaved=True) from None
    return SecureLink(
        records, handshake.transport(), handshake.remote_node_id, remote_address, config
    )


class TcpPendingLink(PendingLink):
    def __init__(
        self, layer: TcpLinkLayer, sock: socket.socket, address: Address, config: TransportConfig
    ) -> None:
        self._layer = layer
        self._records = RecordSocket(sock)
        self._config = config
        self.remote_address = address

    async def handshake(self) -> Link:
        handshake = self._layer._new_handshake(self._config, initiator=False, expected_node_id=None)
        try:
            return await _run_handshake(
                self._records, handshake, self.remote_address, self._config, None
            )
        except BaseException:
            self._records.close()
            raise

    async def aclose(self) -> None:
        self._records.close()
        await trio.lowlevel.checkpoint()


class TcpListener(LinkListener):
    def __init__(self, layer: TcpLinkLayer, sock: socket.socket, config: TransportConfig) -> None:
        self._layer = layer
        self._sock = sock
        self._config = config
        name = sock.getsockname()
        self.address = (str(name[0]), int(name[1]))
        self._resource_failures = 0
        self._next_resource_warning = -math.inf

    async def accept(self) -> PendingLink:
        while True:
            try:
                sock, name = self._sock.accept()
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(self._sock)
                except trio.ClosedResourceError:
                    raise trio.ClosedResourceError("listener is closed") from None
                continue
            except OSError as exc:
                if self._sock.fileno() == -1:
                    raise trio.ClosedResourceError("listener is closed") from None
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of file descriptors or memory: back off instead of spinning,
                    # and say so once a minute, not at every retry.
                    self._resource_failures += 1
                    now = trio.current_time()
                    if now >= self._next_resource_warning:
                        logger.warning(
                            "accept failed %d times (%s); pausing between tries",
                            self._resource_failures,
                            exc,
                        )
                        self._resource_failures = 0
                        self._next_resource_warning = now + RESOURCE_WARNING_INTERVAL
                    await trio.sleep(ACCEPT_BACKOFF)
                else:
                    # The one connection failed (reset, unreachable, refused by a
                    # firewall rule...): it is that connection's problem, not ours.
                    logger.info("accept failed (%s); going on", exc)
                    await trio.lowlevel.checkpoint()
                continue
            try:
                pending = TcpPendingLink(
                    self._layer, sock, (str(name[0]), int(name[1])), self._config
                )
            except OSError as exc:
                sock.close()
                logger.info("dropping a connection that failed at once (%s)", exc)
                continue
            try:
                await trio.lowlevel.checkpoint()
            except BaseException:
                await pending.aclose()
                raise
            return pending

    async def aclose(self) -> None:
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()


class TcpLinkLayer(LinkLayer):
    """Noise-secured TCP. Only for addresses the operator chose; tests use loopback."""

    def __init__(
        self,
        identity: Identity,
        *,
        random_bytes: RandomBytes = nacl.utils.random,
        source_host: str | None = None,
    ):
        """`source_host`: the local address outbound connections are made from (None:
        the kernel's choice)."""
        self.identity = identity
        self._random_bytes = random_bytes
        self._source_host = source_host

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
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise
        return TcpListener(self, sock, config)

    async def connect(
        self, address: Address, expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        host, port = address
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, UnicodeError, ValueError) as exc:
            # Addresses come from peers too (DHT contacts): a bad one fails this dial only.
            raise LinkClosed(f"cannot connect to {host!r}:{port}: {exc}") from None
        try:
            if self._source_host is not None:
                sock.bind((self._source_host, 0))
            records = RecordSocket(sock)
        except OSError as exc:
            sock.close()
            raise LinkClosed(f"cannot connect to {host!r}:{port}: {exc}") from None
        try:
            code = sock.connect_ex(sockaddr)
            if code == errno.EINPROGRESS:
                await records._wait(trio.lowlevel.wait_writable)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code != 0:
                reason = errno.errorcode.get(code, str(code))
                raise LinkClosed(f"cannot connect to {host}:{port}: {reason}")
            handshake = self._new_handshake(
                config, initiator=True, expected_node_id=expected_node_id
            )
            return await _run_handshake(records, handshake, address, config, handshake.start())
        except BaseException:
            records.close()
            raise
