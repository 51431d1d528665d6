"""node/files: the order in which a reader asks the nodes it knows for a segment's chunks."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dht.contact import Contact
from node.files import _likely_holders
from protocol.identity import NodeId


def contacts(rng: random.Random, count: int) -> list[Contact]:
    return [Contact(NodeId(rng.randbytes(32)), ("127.0.0.1", 1000 + i)) for i in range(count)]


@given(seed=st.integers(0, 2**32), known=st.integers(0, 25), ids=st.integers(1, 12))
def test_likely_holders_follow_placement(seed: int, known: int, ids: int) -> None:
    """Every known node once; the j-th is the closest to id j among those not chosen
    before it (placement's rule), and the rest follow."""
    rng = random.Random(seed)
    nodes = contacts(rng, known)
    keys = [rng.randbytes(32) for _ in range(ids)]
    order = _likely_holders(nodes, keys)
    assert sorted(c.node_id.value for c in order) == sorted(c.node_id.value for c in nodes)
    left = list(nodes)
    for position, key in enumerate(keys[: len(nodes)]):
        target = int.from_bytes(key, "big")
        expected = min(left, key=lambda contact: int(contact.node_id) ^ target)
        assert order[position] == expected
        left.remove(expected)
