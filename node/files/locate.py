"""Where chunks go and where they are: the placement rule, and asking who holds what.

docs/PROTOCOL.md#placing-a-file and #finding-and-fetching-a-file. Placement puts each
chunk of a segment on the node closest (XOR) to the chunk's own id among the nodes
closest to the segment's group key (its first chunk id) that hold no other chunk of the
segment; `likely_holders` replays that rule on our own routing table, so a reader can
guess where chunks went before asking. `candidates` finds the nodes near a key with a
lookup; `locate` asks nodes which chunks they hold (HAS_CHUNKS), near the group key
first and then where provider records point.

What it promises: `locate` never raises for a node that does not answer (it is left
out); `candidates` raises `PlacementFailed` only when no lookup is possible at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import trio

from dht.contact import Contact
from dht.errors import DhtError
from node.errors import NodeError, PlacementFailed
from node.files.network import FileNetwork
from protocol.identity import NodeId

__all__ = ["candidates", "closest", "known_near", "likely_holders", "locate", "locate_known"]

logger = logging.getLogger(__name__)


def closest(contacts: Iterable[Contact], key: bytes) -> Contact | None:
    """Placement's rule for one chunk: the contact closest to its id (XOR metric)."""
    target = int.from_bytes(key, "big")
    return min(contacts, key=lambda contact: int(contact.node_id) ^ target, default=None)


async def candidates(
    net: FileNetwork, key: bytes, everyone: list[Contact] | None = None
) -> list[Contact]:
    """The nodes closest to `key` that answered a lookup, us included, closest first.

    With `everyone` (a list the caller keeps across calls), a lookup that found fewer
    than k nodes, which means the network has no more that answer, is remembered in it,
    and later calls sort it instead of looking up again: an upload to a small network
    then makes one lookup, not one per segment."""
    if everyone:
        contacts = list(everyone)
    else:
        try:
            found = await net.dht.find_node(NodeId(key))
        except DhtError as exc:
            raise PlacementFailed(f"looking up nodes failed: {exc}") from None
        contacts = list(found)
        if net.client.own is not None:
            contacts.append(net.client.own)
        # Two segments placed at once may both have looked up: keep one answer.
        if everyone is not None and not everyone and len(found) < net.dht.config.k:
            everyone.extend(contacts)
    target = int.from_bytes(key, "big")
    contacts.sort(key=lambda contact: int(contact.node_id) ^ target)
    return contacts


def known_near(net: FileNetwork, key: bytes) -> list[Contact]:
    """The nodes of our own routing table closest to `key`, and this node."""
    known = net.dht.routing.closest(NodeId(key), net.dht.config.k)
    if net.client.own is not None:
        known.append(net.client.own)
    return known


def likely_holders(known: Sequence[Contact], ids: Sequence[bytes]) -> list[Contact]:
    """`known` in the order placement would have used them for `ids`: each id's
    closest node not yet chosen, id by id (the rest after)."""
    left = list(known)
    order: list[Contact] = []
    for key in ids:
        best = closest(left, key)
        if best is None:
            break
        left.remove(best)
        order.append(best)
    return order + left


async def locate_known(
    net: FileNetwork, ids: Sequence[bytes], also: Sequence[Contact] = ()
) -> list[list[Contact]]:
    """For each of `ids`, the nodes that say they hold it among those our routing table
    knows closest to ids[0] (and this node), with no lookup; then, for ids none of them
    holds, among those it knows closest to each such id (placement gives a chunk to the
    candidate closest to the chunk's own id, and a candidate may lie outside the group
    key's closest: the uploader itself). `also` are asked first too: the holders a
    steward's last audit proved, which its routing table may not know. One HAS_CHUNKS
    per node."""
    holders: list[list[Contact]] = [[] for _ in ids]
    asked: set[NodeId] = set()

    async def ask(contact: Contact, positions: list[int]) -> None:
        try:
            flags = await net.client.held(contact, [ids[at] for at in positions])
        except NodeError as exc:
            logger.debug("%s did not say what it holds: %s", contact.node_id.short(), exc)
            return
        for position, flag in zip(positions, flags, strict=True):
            if flag:
                holders[position].append(contact)

    async def ask_all(wanted: dict[NodeId, tuple[Contact, list[int]]]) -> None:
        async with trio.open_nursery() as nursery:
            for contact, positions in wanted.values():
                asked.add(contact.node_id)
                nursery.start_soon(ask, contact, positions)

    everything = list(range(len(ids)))
    first = [*also, *known_near(net, ids[0])]
    await ask_all({c.node_id: (c, everything) for c in first})
    unclaimed: dict[NodeId, tuple[Contact, list[int]]] = {}
    for position, found in enumerate(holders):
        if not found:
            for contact in known_near(net, ids[position]):
                if contact.node_id not in asked:
                    unclaimed.setdefault(contact.node_id, (contact, []))[1].append(position)
    await ask_all(unclaimed)
    return holders


async def locate(
    net: FileNetwork,
    ids: Sequence[bytes],
    *,
    enough: int | None = None,
    skip: Iterable[NodeId] = (),
    every_provider: bool = False,
) -> list[list[Contact]]:
    """For each of `ids`, the live nodes that say they hold it: those a lookup finds
    closest to ids[0], then, for ids none of them holds, the nodes named by provider
    records (a record may outlive its holder, so only the answer counts).

    With `enough` (a reader's question: where are enough chunks?), the nodes closest to
    ids[0] in our own routing table are asked first, with no lookup (in a network small
    enough that we know everyone, that is all it takes): first the `enough` that
    placement most likely chose for the first ids, then the others, and the asking
    stops as soon as `enough` ids have a holder. Without it (a check's question: who
    holds what?), everyone the lookup finds is asked. Nodes in `skip` (found
    unreachable) are not. With `every_provider` (the question of who holds the copies
    of a chunk stored whole: more than one holder per id counts), the nodes provider
    records name are asked as well, even for ids the lookup's nodes hold."""
    holders: list[list[Contact]] = [[] for _ in ids]
    asked: set[NodeId] = set(skip)

    def satisfied() -> bool:
        located = sum(1 for found in holders if found)
        return located == len(ids) if enough is None else located >= enough

    async def ask(contact: Contact, scope: trio.CancelScope) -> None:
        try:
            flags = await net.client.held(contact, ids)
        except NodeError as exc:
            logger.debug("%s did not say what it holds: %s", contact.node_id.short(), exc)
            return
        for position, flag in enumerate(flags):
            if flag:
                holders[position].append(contact)
        if enough is not None and satisfied():
            scope.cancel()  # the others' answers would not change what we fetch

    async def ask_all(contacts: Iterable[Contact]) -> None:
        async with trio.open_nursery() as nursery:
            for contact in contacts:
                if contact.node_id not in asked:
                    asked.add(contact.node_id)
                    nursery.start_soon(ask, contact, nursery.cancel_scope)

    if enough is not None:
        likely = likely_holders(known_near(net, ids[0]), ids)
        await ask_all(likely[:enough])  # most often enough on its own
        if not satisfied():
            await ask_all(likely[enough:])
    if not satisfied():
        await ask_all(await candidates(net, ids[0]))
    missing = [position for position, found in enumerate(holders) if every_provider or not found]
    if missing and (every_provider or not satisfied()):
        named: dict[NodeId, Contact] = {}

        async def providers_of(position: int) -> None:
            try:
                found = await net.dht.find_providers(NodeId(ids[position]))
            except DhtError:
                return
            for contact in found:
                named.setdefault(contact.node_id, contact)

        async with trio.open_nursery() as nursery:
            for position in missing:
                nursery.start_soon(providers_of, position)
        await ask_all(named.values())
    return holders
