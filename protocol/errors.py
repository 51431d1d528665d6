"""The one exception hierarchy of protocol/.

As in h11: `LocalProtocolError` means our own side misused the code (a bug or a bad
argument); `RemoteProtocolError` means the peer sent something that breaks the
protocol. A driver that catches `RemoteProtocolError` closes that peer's request or
connection and carries on; it never lets it take the node down.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by protocol/."""


class LocalProtocolError(ProtocolError):
    """Our side asked for something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol (malformed, forged or out of order)."""
