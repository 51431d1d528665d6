"""Tests of dht/contact.py: contacts and the cache of contacts made from answers."""

from __future__ import annotations

import pytest

from dht.contact import Contact, ContactCache
from protocol.identity import NodeId
from protocol.messages import WireContact


def wire(number: int, host: str = "127.0.0.1", port: int = 4000) -> WireContact:
    return WireContact(number.to_bytes(32, "big"), host, port)


def test_cached_contact_equals_a_fresh_one_and_is_reused() -> None:
    """The cache gives what Contact.from_wire gives, and the same object next time."""
    cache = ContactCache()
    first = cache.from_wire(wire(1))
    assert first == Contact.from_wire(wire(1))
    assert first.node_id == NodeId((1).to_bytes(32, "big"))
    assert first.address == ("127.0.0.1", 4000)
    assert cache.from_wire(wire(1)) is first
    assert len(cache) == 1


@pytest.mark.parametrize(("host", "port"), [("127.0.0.2", 4000), ("127.0.0.1", 4001)])
def test_a_new_address_gives_a_new_contact(host: str, port: int) -> None:
    """An id heard at another host or port is not given its old address."""
    cache = ContactCache()
    old = cache.from_wire(wire(1))
    moved = cache.from_wire(wire(1, host, port))
    assert moved.address == (host, port)
    assert moved.node_id == old.node_id
    assert cache.from_wire(wire(1, host, port)) is moved  # the newer address is kept
    assert len(cache) == 1


def test_cache_is_bounded() -> None:
    """At its limit the cache starts again empty: memory stays bounded."""
    cache = ContactCache(limit=3)
    kept = [cache.from_wire(wire(number)) for number in range(3)]
    assert len(cache) == 3
    cache.from_wire(wire(3))
    assert len(cache) == 1
    again = cache.from_wire(wire(0))
    assert again == kept[0] and again is not kept[0]


def test_cache_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        ContactCache(limit=0)
