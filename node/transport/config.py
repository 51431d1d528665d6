"""Transport limits and timeouts, in one validated frozen dataclass (h2's model)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from protocol.messages import DEFAULT_MAX_FRAME_SIZE

__all__ = ["TransportConfig"]


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Every limit and timeout of the transport. Times are in seconds."""

    # Largest encoded envelope we send or accept; a peer that announces a larger frame
    # is cut off before we read it.
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    # Requests one peer may have in flight to us (and we to it). A peer that sends
    # more is cut off: an honest peer holds the same limit on its own side.
    max_inflight_per_peer: int = 64
    # Requests of all peers (and of one address prefix: None, no such limit) being
    # served at once; past either, a request is answered BUSY.
    max_inflight: int = 2048
    max_inflight_per_prefix: int | None = 512
    # Inbound connections (handshaking or established) we keep; beyond it new ones are
    # closed at once. Outbound connections have a budget of the same size of their own.
    max_connections: int = 512
    # Inbound handshakes in progress at once: a flood of half-open connections is
    # refused beyond this without touching established ones.
    max_handshakes: int = 64
    # Of those, kept for hosts of contacts already in our routing table (who also pass
    # the per-prefix limits): a flood of newcomers cannot lock out the peers we know.
    reserved_connections: int = 64
    reserved_handshakes: int = 8
    # The same two limits for one address prefix (/24 IPv4, /48 IPv6): identities cost
    # microseconds, so no single host or subnet may hold more than its part of the
    # slots, and a newcomer from elsewhere always finds one. None: no such limit (a
    # node on loopback, whose peers all share 127.0.0.0/24).
    max_connections_per_prefix: int | None = 32
    max_handshakes_per_prefix: int | None = 8
    # The network's proof of work on NodeIds, in bits (protocol/identity.py): the
    # handshake refuses a peer whose id does not meet it. 0 accepts every id.
    id_difficulty: int = 0
    # Memory budgets (node/transport/budget.py). Large frames being received, at their
    # announced length: in all, and from one address prefix (None: no such limit, on
    # loopback). Answers made and not yet sent: in all, to one peer and to one prefix
    # (None: no such limit); past them chunk requests are answered BUSY. Each must hold
    # one frame of the largest size.
    max_receive_buffer: int = 32 * 1024 * 1024
    max_receive_buffer_per_prefix: int | None = 12 * 1024 * 1024
    max_answer_backlog: int = 32 * 1024 * 1024
    max_answer_backlog_per_peer: int = 8 * 1024 * 1024
    max_answer_backlog_per_prefix: int | None = 16 * 1024 * 1024
    # All that the node's links hold queued and not yet sent; past it, the connection
    # with the most queued is cut off (node/transport/budget.py).
    max_send_queue: int = 64 * 1024 * 1024
    # A frame must arrive whole within this long of its first byte (at least 35 kB/s
    # for the largest), or its sender is cut off.
    frame_timeout: float = 120.0
    # A dial or an inbound handshake that takes longer is abandoned.
    handshake_timeout: float = 10.0
    # Default wait for an answer, and the longest a handler may take to give one.
    request_timeout: float = 15.0
    # A connection with nothing in flight for this long is closed.
    idle_timeout: float = 120.0
    # A peer that does not read what we send for this long is cut off.
    send_timeout: float = 30.0
    # This many requests in a row that time out on one connection close it.
    max_consecutive_timeouts: int = 3

    def on_loopback(self) -> TransportConfig:
        """These limits for a node on loopback: every peer of a testnet shares
        127.0.0.0/24, so the per-prefix limits are lifted (the node-wide ones stay)."""
        return replace(
            self,
            max_connections_per_prefix=None,
            max_handshakes_per_prefix=None,
            max_receive_buffer_per_prefix=None,
            max_inflight_per_prefix=None,
            max_answer_backlog_per_prefix=None,
        )

    def __post_init__(self) -> None:
        for name in (
            "max_frame_size",
            "max_inflight_per_peer",
            "max_inflight",
            "max_connections",
            "max_handshakes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"TransportConfig.{name} must be at least 1")
        if not 0 <= self.reserved_connections < self.max_connections:
            raise ValueError("TransportConfig.reserved_connections must be 0..max_connections-1")
        if not 0 <= self.reserved_handshakes < self.max_handshakes:
            raise ValueError("TransportConfig.reserved_handshakes must be 0..max_handshakes-1")
        for name in (
            "max_connections_per_prefix",
            "max_handshakes_per_prefix",
            "max_inflight_per_prefix",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TransportConfig.{name} must be at least 1, or None")
        if not 0 <= self.id_difficulty <= 64:
            raise ValueError("TransportConfig.id_difficulty must be 0..64 bits")
        if self.max_frame_size > 64 * 1024 * 1024:
            raise ValueError("TransportConfig.max_frame_size is capped at 64 MiB")
        for name in (
            "max_receive_buffer",
            "max_receive_buffer_per_prefix",
            "max_answer_backlog",
            "max_answer_backlog_per_peer",
            "max_answer_backlog_per_prefix",
            "max_send_queue",
        ):
            value = getattr(self, name)
            if value is not None and value < self.max_frame_size:
                raise ValueError(
                    f"TransportConfig.{name} must hold one frame of max_frame_size bytes"
                )
        for name in (
            "handshake_timeout",
            "request_timeout",
            "idle_timeout",
            "send_timeout",
            "frame_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"TransportConfig.{name} must be positive")
        if self.max_consecutive_timeouts < 1:
            raise ValueError("TransportConfig.max_consecutive_timeouts must be at least 1")
