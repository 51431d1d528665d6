"""The one exception hierarchy of node/.

Every error a caller of the node can see is a `NodeError`; the CLI turns each into one
line and a non-zero exit code. Errors caused by a peer close that peer's request or
connection; they never stop the node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported for its name only: the CLI loads this module and must start fast
    from protocol.messages import ErrorCode

__all__ = [
    "ChunkDamaged",
    "ChunkMismatch",
    "ChunkNotFound",
    "ChunkTooLarge",
    "CommandFailed",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionFailed",
    "ControlError",
    "KeyFileError",
    "LeaseRefused",
    "LinkClosed",
    "MessageTooLarge",
    "NoRoom",
    "NodeError",
    "NodeNotRunning",
    "OverQuota",
    "PlacementFailed",
    "RemoteError",
    "RequestRejected",
    "RequestTimeout",
    "StoreError",
    "StoreFull",
    "TransportError",
    "Unreadable",
    "single_error",
]


class NodeError(Exception):
    """Base class of every error raised by node/."""


class KeyFileError(NodeError):
    """The node's key file is missing, malformed or readable by others."""


class ConfigError(NodeError):
    """A flag or a config file value is malformed or out of range."""


# -- the owner's commands and the control socket (node/control.py) ----------------------


class ControlError(NodeError):
    """The control connection broke or carried something malformed."""


class NodeNotRunning(ControlError):
    """No node answers on the control socket."""


class CommandFailed(NodeError):
    """The node ran the command and it failed; the message is the node's one line."""


# -- files on the network (node/files/) -----------------------------------------------


class PlacementFailed(NodeError):
    """The network did not take enough of an upload's chunks."""


class Unreadable(NodeError):
    """A file cannot be read back: its manifest or some segment lacks k chunks."""


# -- talking to peers (node/transport/) -------------------------------------------------


class TransportError(NodeError):
    """Talking to a peer failed."""


class ConnectionFailed(TransportError):
    """Could not open an authenticated connection (refused, unreachable, bad handshake,
    wrong identity, timeout, or the connection limit is reached)."""


class ConnectionClosed(TransportError):
    """The connection went away before the answer came."""


class RequestTimeout(TransportError):
    """The peer did not answer within the request timeout."""


class MessageTooLarge(TransportError):
    """A message is larger than the frame size limit."""


class RemoteError(TransportError):
    """The peer answered with an ERROR message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"peer answered error {code}: {message}")
        self.code = code
        self.message = message


# Signals from a link (node.transport.link) to the transport above it, which turns each
# into one of the TransportErrors above, or a log line, before its callers could see it.
# Not TransportErrors themselves, so that no `except TransportError` meant for a failed
# request takes one of them for its own.


class LinkClosed(NodeError):
    """The link is closed: by us, by the peer, or because the peer broke the protocol.

    `reason` says which, for the log line that every cut-off peer gets; `misbehaved` is
    true when the peer broke the protocol (as opposed to going away).
    """

    def __init__(self, reason: str, *, misbehaved: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.misbehaved = misbehaved


class NoRoom(NodeError):
    """The link's send queue stayed full until the caller's deadline; nothing was sent."""


class RequestRejected(NodeError):
    """Raised by a request handler to answer with an ERROR of the given code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StoreError(NodeError):
    """The chunk store failed. Base of every chunk store error, and raised as itself when
    the disk or the index fails in a way the store cannot explain (an I/O error, a
    damaged or foreign index, a closed store, another process holding the store)."""


class StoreFull(StoreError):
    """A new chunk was refused: it would exceed the configured capacity, or the disk (or
    the user's quota) is full. Nothing of the chunk is left behind."""


class OverQuota(StoreError):
    """A chunk or a lease was refused: the key or the network prefix it would be charged
    to already keeps its fair share of this node (node/quota.py)."""


class LeaseRefused(NodeError):
    """A lease was refused: forged, expired, or from the future of this node's clock."""


class ChunkTooLarge(StoreError):
    """A chunk is larger than the store's per-chunk size limit."""


class ChunkMismatch(StoreError):
    """A chunk's bytes do not hash to the id they were offered under."""


class ChunkNotFound(StoreError):
    """The store does not hold this chunk."""


class ChunkDamaged(ChunkNotFound):
    """The store held this chunk, but its file was damaged or gone; the chunk has been
    dropped, so it is now not found (hence the subclass)."""


def single_error(
    exc: BaseException, reportable: tuple[type[BaseException], ...] = (NodeError,)
) -> BaseException:
    """The error to tell the user about for `exc`: `exc` itself, or, for an exception
    group (nested or not), the first exception inside it if it holds just one, or holds
    only `reportable` ones, else the group.

    A trio nursery wraps whatever escapes it in an ExceptionGroup, even a lone error, and
    tasks run side by side can fail together (three segments of a download found
    unreadable at once); the CLI and the control socket unwrap the group so that a user
    error still reaches the user as one line, not as an internal error or a traceback.
    """
    leaves = list(_leaves(exc))
    if len(leaves) == 1 or all(isinstance(leaf, reportable) for leaf in leaves):
        return leaves[0]
    return exc


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
