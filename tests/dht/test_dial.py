"""The dial policy (dht/dial.py): which addresses from peers' answers a node dials."""

from __future__ import annotations

import pytest

from dht.dial import DialPolicy, Scope, scope_of


@pytest.mark.parametrize(
    ("host", "scope"),
    [
        ("203.0.113.5", Scope.PRIVATE),  # TEST-NET-3: not global, so Python calls it private
        ("8.8.8.8", Scope.PUBLIC),
        ("2606:4700::1111", Scope.PUBLIC),
        ("::ffff:8.8.8.8", Scope.PUBLIC),
        ("127.0.0.1", Scope.LOOPBACK),
        ("127.9.9.9", Scope.LOOPBACK),
        ("::1", Scope.LOOPBACK),
        ("10.1.2.3", Scope.PRIVATE),
        ("192.168.0.7", Scope.PRIVATE),
        ("172.20.0.1", Scope.PRIVATE),
        ("fd00::5", Scope.PRIVATE),
        ("100.64.1.1", Scope.PRIVATE),
        ("169.254.1.1", Scope.NEVER),
        ("fe80::1", Scope.NEVER),
        ("224.0.0.1", Scope.NEVER),
        ("0.0.0.0", Scope.NEVER),
        ("240.0.0.1", Scope.NEVER),
        ("example.org", Scope.NAME),
        ("localhost", Scope.NAME),
    ],
)
def test_scopes(host: str, scope: Scope) -> None:
    assert scope_of(host) is scope


def test_a_public_node_dials_public_addresses_only() -> None:
    policy = DialPolicy.for_node(["0.0.0.0", "8.8.4.4"])
    assert policy.allows("8.8.8.8")
    for host in ("127.0.0.1", "10.0.0.1", "192.168.1.1", "localhost", "169.254.0.1", "::1"):
        assert not policy.allows(host), host


def test_a_loopback_testnet_and_a_private_network_still_work() -> None:
    loopback = DialPolicy.for_node(["127.0.0.1"])
    assert loopback.allows("127.0.0.1") and loopback.allows("8.8.8.8")
    assert not loopback.allows("10.0.0.1") and not loopback.allows("localhost")
    lan = DialPolicy.for_node(["0.0.0.0", "192.168.1.10"])  # bootstraps through the LAN
    assert lan.allows("192.168.1.22") and lan.allows("10.0.0.1")
    assert not lan.allows("127.0.0.1")


async def test_a_node_takes_from_an_answer_only_what_it_may_dial(
    autojump_clock: object,
) -> None:
    """A running simulated node (it lives on 10.x: private) drops a liar's host names,
    loopback and link-local addresses from an answer, takes public and private ones, and
    no more than k of them (issue 18, row 5)."""
    import random

    from protocol.messages import WireContact
    from simulations.harness import SIMULATED_NODE, open_network

    rng = random.Random(3)
    async with open_network(3, seed=3, node_config=SIMULATED_NODE) as network:
        dht = network.nodes[0].node.dht
        assert dht is not None
        hosts = ["localhost", "127.0.0.1", "169.254.3.3", "evil.example", "8.8.8.8", "10.9.9.9"]
        wires = [WireContact(rng.randbytes(32), host, 4410) for host in hosts]
        taken = dht._dialable(wires)
        assert [contact.address[0] for contact in taken] == ["8.8.8.8", "10.9.9.9"]
        assert dht.refused_addresses == 4
        many = [WireContact(rng.randbytes(32), "8.8.8.8", 1000 + i) for i in range(32)]
        assert len(dht._dialable(many)) == dht.config.k
        network.nursery.cancel_scope.cancel()


def test_contacts_whose_id_lacks_the_proof_of_work_are_not_dialled() -> None:
    """On a network with a difficulty, a contact whose NodeId misses it is not worth a
    dial (the handshake would refuse it) nor a place in a lookup (issue 18, row 1)."""
    import random

    from protocol.identity import Identity, meets_difficulty

    rng = random.Random(5)
    worked = Identity.generate(rng.randbytes, difficulty=6).node_id.value
    weak = next(
        identity.node_id.value
        for identity in (Identity(rng.randbytes(32)) for _ in range(100))
        if not meets_difficulty(identity.node_id, 6)
    )
    policy = DialPolicy.for_node(["0.0.0.0"], id_difficulty=6)
    assert policy.allows("8.8.8.8", worked)
    assert not policy.allows("8.8.8.8", weak)
    assert not policy.allows("10.0.0.1", worked)  # the address rules still hold
    assert DialPolicy.for_node(["0.0.0.0"]).allows("8.8.8.8", weak)  # difficulty 0
