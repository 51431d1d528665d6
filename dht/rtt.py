"""Adaptive query timeouts from measured round-trip times (RFC 6298, per peer).

A DHT query should not wait 5 s for a peer that always answers in 40 ms, nor give up
after 40 ms on one that takes 400. `RttEstimator` keeps, for each peer measured, the
smoothed round-trip time and its variation exactly as TCP does (RFC 6298 §2):

    first sample R:   srtt = R                 rttvar = R / 2
    next sample R:    rttvar = 3/4 rttvar + 1/4 |srtt - R|     (beta = 1/4)
                      srtt   = 7/8 srtt   + 1/8 R              (alpha = 1/8)
    timeout = srtt + 4 * rttvar, clamped to [min_query_timeout, max_query_timeout]

RFC 6298's clock granularity G is taken as 0: `min_query_timeout` is the floor instead.

Which timeout a peer gets:

| what we know of the peer                 | timeout_for(peer)                             |
|------------------------------------------|-----------------------------------------------|
| measured (and not evicted or forgotten)  | its own srtt + 4 rttvar, times its backoff     |
| never measured, others measured          | the global srtt + 4 rttvar over every sample  |
| nothing measured at all                  | DhtConfig.initial_query_timeout               |

The global estimate is one more RFC 6298 smoother fed every sample from every peer, so
its rttvar also covers the spread between peers: a fair guess for a stranger. It is not
changed by `forget()` or eviction. A query that times out gives no sample (Karn's rule),
so a peer whose round trip grew past its timeout would never be measured again;
`observe_timeout()` doubles that peer's timeout (RFC 6298 §5.5) until its next sample.

Memory is bounded: at most `max_peers` peers are kept; observing one more evicts the peer
whose last sample is oldest. Pure: no clock, no I/O; the driver measures the round trip
(`Query.sent_at` in dht/lookup.py) and calls `observe()`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from dht.config import DhtConfig
from protocol.identity import NodeId

FIRST_CONTACT_FACTOR = 2
"""A peer not yet measured gets this many times the global timeout (handshake included)."""

__all__ = ["DEFAULT_MAX_PEERS", "RttEstimate", "RttEstimator"]

# RFC 6298 §2 constants.
SMOOTHING = 1 / 8  # "alpha"
VARIATION_SMOOTHING = 1 / 4  # "beta"
VARIATION_WEIGHT = 4  # "K"
# RFC 6298 §5.5 doubles the timeout per expiry; more doublings than this cannot matter
# once clamped to max_query_timeout, and the cap keeps the multiplier finite.
MAX_BACKOFF_DOUBLINGS = 16

DEFAULT_MAX_PEERS = 4096
"""Peers whose round trips are kept; a routing table at k = 20 holds a few hundred."""


@dataclass(frozen=True, slots=True)
class RttEstimate:
    """A smoothed round trip and its variation, in seconds (RFC 6298's SRTT, RTTVAR)."""

    srtt: float
    rttvar: float

    @classmethod
    def first(cls, rtt: float) -> RttEstimate:
        """The estimate after one sample (RFC 6298 §2.2)."""
        return cls(srtt=rtt, rttvar=rtt / 2)

    def updated(self, rtt: float) -> RttEstimate:
        """The estimate after one more sample (RFC 6298 §2.3: rttvar first, old srtt)."""
        rttvar = (1 - VARIATION_SMOOTHING) * self.rttvar + VARIATION_SMOOTHING * abs(
            self.srtt - rtt
        )
        srtt = (1 - SMOOTHING) * self.srtt + SMOOTHING * rtt
        return RttEstimate(srtt=srtt, rttvar=rttvar)

    @property
    def timeout(self) -> float:
        """srtt + K * rttvar, unclamped."""
        return self.srtt + VARIATION_WEIGHT * self.rttvar


@dataclass(slots=True)
class _Peer:
    estimate: RttEstimate
    backoff_doublings: int = 0


class RttEstimator:
    """Per-peer and global RTT estimates, and the query timeouts they give."""

    __slots__ = ("_config", "_global", "_max_peers", "_peers")

    def __init__(self, config: DhtConfig, *, max_peers: int = DEFAULT_MAX_PEERS) -> None:
        if max_peers < 1:
            raise ValueError("RttEstimator max_peers must be >= 1")
        self._config = config
        self._max_peers = max_peers
        # Least recently updated first, so eviction pops from the front.
        self._peers: OrderedDict[NodeId, _Peer] = OrderedDict()
        self._global: RttEstimate | None = None

    def observe(self, node_id: NodeId, rtt: float) -> None:
        """Record one measured round trip (seconds) of a query that `node_id` answered."""
        if not (math.isfinite(rtt) and rtt >= 0):
            raise ValueError(f"a round-trip time must be finite and >= 0, not {rtt!r}")
        peers = self._peers
        known = peers.get(node_id)
        if known is None:
            peers[node_id] = _Peer(RttEstimate.first(rtt))
            while len(peers) > self._max_peers:
                peers.popitem(last=False)
        else:
            # Moved to the end: the most recently updated. A sample ends any backoff.
            peers.move_to_end(node_id)
            known.estimate = known.estimate.updated(rtt)
            known.backoff_doublings = 0
        self._global = RttEstimate.first(rtt) if self._global is None else self._global.updated(rtt)

    def observe_timeout(self, node_id: NodeId) -> None:
        """A query to `node_id` timed out: double its timeout until its next sample
        (RFC 6298 §5.5). Peers never measured are left alone."""
        peer = self._peers.get(node_id)
        if peer is not None:
            peer.backoff_doublings = min(peer.backoff_doublings + 1, MAX_BACKOFF_DOUBLINGS)

    def forget(self, node_id: NodeId) -> None:
        """Drop what we know of `node_id` (it left the routing table); no-op if unknown."""
        self._peers.pop(node_id, None)

    def estimate(self, node_id: NodeId) -> RttEstimate | None:
        """The peer's own estimate, or None if it was never measured (or was dropped)."""
        peer = self._peers.get(node_id)
        return None if peer is None else peer.estimate

    @property
    def global_estimate(self) -> RttEstimate | None:
        """The estimate over every sample from every peer; None before the first."""
        return self._global

    def timeout_for(self, node_id: NodeId) -> float:
        """How long to wait for `node_id`'s answer, in seconds (see the module's table)."""
        config = self._config
        peer = self._peers.get(node_id)
        if peer is not None:
            timeout = peer.estimate.timeout * (1 << peer.backoff_doublings)
        elif self._global is not None:
            # Never measured: its first request also pays for the handshake (about one
            # more round trip), so allow twice the typical timeout.
            timeout = FIRST_CONTACT_FACTOR * self._global.timeout
        else:
            timeout = config.initial_query_timeout
        return min(max(timeout, config.min_query_timeout), config.max_query_timeout)

    def __len__(self) -> int:
        """Peers with an estimate of their own."""
        return len(self._peers)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._peers
