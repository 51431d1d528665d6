"""RttEstimator: RFC 6298 smoothing per peer and overall, clamped timeouts, bounded memory."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.config import DhtConfig
from dht.rtt import FIRST_CONTACT_FACTOR, RttEstimate, RttEstimator
from protocol.identity import NodeId

CONFIG = DhtConfig()  # initial 2.0 s, clamped to [0.1, 5.0]
PEER_A = NodeId.from_int(1)
PEER_B = NodeId.from_int(2)
PEER_C = NodeId.from_int(3)


def test_unknown_peer_gets_initial_timeout() -> None:
    """Before any sample every peer gets initial_query_timeout."""
    estimator = RttEstimator(CONFIG)
    assert estimator.timeout_for(PEER_A) == 2.0
    assert estimator.estimate(PEER_A) is None
    assert estimator.global_estimate is None


def test_first_sample() -> None:
    """The first sample sets srtt = R and rttvar = R/2, so the timeout is 3R (RFC 6298 §2.2)."""
    estimator = RttEstimator(CONFIG)
    estimator.observe(PEER_A, 1.0)
    assert estimator.estimate(PEER_A) == RttEstimate(srtt=1.0, rttvar=0.5)
    assert estimator.timeout_for(PEER_A) == 3.0


def test_second_sample_matches_hand_computation() -> None:
    """A second sample updates rttvar with the old srtt, then srtt (RFC 6298 §2.3)."""
    estimator = RttEstimator(CONFIG)
    estimator.observe(PEER_A, 1.0)
    estimator.observe(PEER_A, 0.5)
    # rttvar = 3/4 * 0.5 + 1/4 * |1.0 - 0.5| = 0.5; srtt = 7/8 * 1.0 + 1/8 * 0.5 = 0.9375
    assert estimator.estimate(PEER_A) == RttEstimate(srtt=0.9375, rttvar=0.5)
    assert estimator.timeout_for(PEER_A) == 0.9375 + 4 * 0.5
    estimator.observe(PEER_A, 0.9375)
    # rttvar = 3/4 * 0.5 + 0 = 0.375; srtt unchanged
    assert estimator.estimate(PEER_A) == RttEstimate(srtt=0.9375, rttvar=0.375)
    assert estimator.timeout_for(PEER_A) == 2.4375


def test_timeouts_are_clamped() -> None:
    """Timeouts stay within [min_query_timeout, max_query_timeout]."""
    estimator = RttEstimator(CONFIG)
    estimator.observe(PEER_A, 0.001)
    estimator.observe(PEER_B, 10.0)
    estimator.observe(PEER_C, 0.0)
    assert estimator.timeout_for(PEER_A) == CONFIG.min_query_timeout == 0.1
    assert estimator.timeout_for(PEER_B) == 5.0
    assert estimator.timeout_for(PEER_C) == 0.1


def test_unmeasured_peer_uses_the_global_estimate() -> None:
    """A peer never measured gets twice the estimate over every sample from every peer
    (its first request also pays for the handshake), clamped to the maximum."""
    estimator = RttEstimator(CONFIG)
    estimator.observe(PEER_A, 0.2)
    estimator.observe(PEER_B, 0.1)
    global_estimate = estimator.global_estimate
    assert global_estimate is not None
    assert global_estimate.srtt == pytest.approx(0.1875)
    assert global_estimate.rttvar == pytest.approx(0.1)
    assert estimator.timeout_for(PEER_C) == pytest.approx(2 * 0.5875)
    estimator.observe(PEER_A, 3.0)
    assert estimator.timeout_for(PEER_C) == CONFIG.max_query_timeout
    estimator.observe(PEER_B, 0.5)
    # Each measured peer keeps its own estimate.
    assert estimator.timeout_for(PEER_B) == pytest.approx(
        RttEstimate.first(0.1).updated(0.5).timeout
    )
    assert estimator.timeout_for(PEER_B) < CONFIG.max_query_timeout


def test_forget_falls_back_to_global() -> None:
    """A forgotten peer is treated as never measured; the global estimate keeps its samples."""
    estimator = RttEstimator(CONFIG)
    estimator.observe(PEER_A, 0.1)
    estimator.observe(PEER_B, 1.0)
    estimator.forget(PEER_A)
    estimator.forget(PEER_C)  # unknown: no-op
    assert PEER_A not in estimator
    assert len(estimator) == 1
    global_estimate = estimator.global_estimate
    assert global_estimate is not None
    assert estimator.timeout_for(PEER_A) == pytest.approx(
        min(FIRST_CONTACT_FACTOR * global_estimate.timeout, CONFIG.max_query_timeout)
    )


def test_eviction_drops_the_least_recently_updated_peer() -> None:
    """Over max_peers, the peer whose last sample is oldest is evicted."""
    estimator = RttEstimator(CONFIG, max_peers=2)
    estimator.observe(PEER_A, 0.1)
    estimator.observe(PEER_B, 0.1)
    estimator.observe(PEER_A, 0.1)  # A is now the most recently updated
    estimator.observe(PEER_C, 0.1)
    assert PEER_B not in estimator
    assert PEER_A in estimator
    assert PEER_C in estimator
    assert len(estimator) == 2


def test_timeout_backs_off_until_the_next_sample() -> None:
    """Each timeout doubles a peer's timeout (RFC 6298 §5.5), up to the max; a sample resets it."""
    estimator = RttEstimator(CONFIG)
    estimator.observe(PEER_A, 0.5)
    assert estimator.timeout_for(PEER_A) == 1.5
    estimator.observe_timeout(PEER_A)
    assert estimator.timeout_for(PEER_A) == 3.0
    estimator.observe_timeout(PEER_A)
    assert estimator.timeout_for(PEER_A) == 5.0
    for _ in range(100):
        estimator.observe_timeout(PEER_A)
    assert estimator.timeout_for(PEER_A) == 5.0
    estimator.observe(PEER_A, 0.5)
    # rttvar = 3/4 * 0.25 + 0 = 0.1875; srtt = 0.5
    assert estimator.timeout_for(PEER_A) == 0.5 + 4 * 0.1875
    estimator.observe_timeout(PEER_B)  # never measured: nothing to back off
    assert PEER_B not in estimator


@pytest.mark.parametrize("rtt", [-0.1, math.nan, math.inf])
def test_invalid_samples_are_refused(rtt: float) -> None:
    """A negative or non-finite round trip is a caller bug and raises ValueError."""
    estimator = RttEstimator(CONFIG)
    with pytest.raises(ValueError):
        estimator.observe(PEER_A, rtt)
    assert estimator.global_estimate is None


def test_max_peers_must_be_positive() -> None:
    """An estimator that could hold no peer is refused."""
    with pytest.raises(ValueError):
        RttEstimator(CONFIG, max_peers=0)


@settings(derandomize=True, max_examples=200)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.floats(0, 1e6, allow_nan=False)),
        max_size=40,
    ),
    st.integers(0, 7),
)
def test_timeouts_always_within_bounds(samples: list[tuple[int, float]], probe: int) -> None:
    """Whatever the samples, every timeout lies in [min_query_timeout, max_query_timeout]."""
    estimator = RttEstimator(CONFIG, max_peers=3)
    for peer, rtt in samples:
        estimator.observe(NodeId.from_int(peer), rtt)
        assert len(estimator) <= 3
        assert CONFIG.min_query_timeout <= estimator.timeout_for(NodeId.from_int(probe)) <= 5.0
