"""The adapter that lets the DHT run over the node's Transport (TCP or in-memory).

It turns the transport's errors into dht.errors.RpcFailed and the DHT's record
refusals into ERROR REFUSED answers, so that dht/ never imports node/.
"""

from __future__ import annotations

import trio

from dht.contact import Address, Contact
from dht.errors import RecordRejected, RpcFailed
from dht.transport import InlineHandler
from node.errors import RequestRejected, TransportError
from node.transport import Peer, Transport
from protocol.identity import NodeId
from protocol.messages import ErrorCode, Message

__all__ = ["DhtTransportAdapter"]


class DhtTransportAdapter:
    """dht.transport.RpcTransport over a node.transport.Transport."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @property
    def node_id(self) -> NodeId:
        return self._transport.node_id

    async def call(self, contact: Contact, message: Message, *, timeout: float) -> Message:
        try:
            return await self._transport.request(
                contact.address, message, node_id=contact.node_id, timeout=timeout
            )
        except TransportError as exc:
            raise RpcFailed(str(exc)) from exc

    async def ping(self, contact: Contact, *, timeout: float) -> float:
        with trio.move_on_after(timeout):
            try:
                _, rtt = await self._transport.ping(contact.address, node_id=contact.node_id)
            except TransportError as exc:
                raise RpcFailed(str(exc)) from exc
            return rtt
        raise RpcFailed(f"{contact.node_id.short()} did not answer a ping in {timeout:g} s")

    async def identify(self, address: Address, *, timeout: float) -> NodeId:
        with trio.move_on_after(timeout):
            try:
                node_id, _ = await self._transport.ping(address)
            except TransportError as exc:
                raise RpcFailed(str(exc)) from exc
            return node_id
        raise RpcFailed(f"{address[0]}:{address[1]} did not answer in {timeout:g} s")

    def serve(self, message_type: type[Message], handler: InlineHandler) -> None:
        def answer(peer: Peer, message: Message) -> Message:
            try:
                return handler(peer, message)
            except RecordRejected as exc:
                raise RequestRejected(ErrorCode.REFUSED, str(exc)) from exc

        self._transport.add_handler(message_type, answer)
