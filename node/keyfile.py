"""The node's key file: created once with mode 0600, refused if others can read it.

The format (magic line plus 32-byte seed) is defined in protocol.identity; this module
does the file I/O. The file is written atomically (temp file, fsync, rename) so that a
crash while creating it never leaves a half key behind.

A new key is made to meet the network's proof of work (`difficulty` bits: about 2**d
key generations). A key made before the network asked for it, whose id misses it,
would be refused by every peer: it is moved aside (to `node.key.<id>.weak`, still
0600, never deleted) and a new one is made in its place. What the old key signed stays
valid until it runs out: leases the node renews are signed by the new key from then on.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import nacl.utils

from node.errors import KeyFileError
from protocol.errors import ProtocolError
from protocol.identity import Identity, meets_difficulty

__all__ = ["load_identity", "load_or_create_identity", "save_identity"]

logger = logging.getLogger(__name__)


def save_identity(identity: Identity, path: Path) -> None:
    """Write `identity` to `path` with mode 0600; refuses to overwrite an existing file."""
    if path.exists():
        raise KeyFileError(f"{path} exists already; refusing to overwrite a node key")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but an old temp file could
        os.write(fd, identity.to_key_file())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)


def load_identity(path: Path) -> Identity:
    """Read the key at `path`; refuse it if group or others have any access to it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is accessible by others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}` if it has not leaked"
        )
    try:
        return Identity.from_key_file(path.read_bytes())
    except ProtocolError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc


def load_or_create_identity(path: Path, *, difficulty: int = 0) -> Identity:
    """The identity at `path`, made (and saved) on first use, or remade if its id
    misses `difficulty` bits of proof of work (the old key kept beside it)."""
    if path.exists():
        identity = load_identity(path)
        if meets_difficulty(identity.node_id, difficulty):
            return identity
        weak = path.with_name(f"{path.name}.{identity.node_id.short()}.weak")
        logger.warning(
            "this node's id %s… does not meet the network's proof of work (%d bits), so "
            "peers would refuse it: making a new identity; the old key is kept at %s",
            identity.node_id.short(),
            difficulty,
            weak,
        )
        os.replace(path, weak)
    elif difficulty:
        logger.info(
            "making this node's identity: %d bits of proof of work, about 2**%d tries "
            "(usually under a minute), once",
            difficulty,
            difficulty,
        )
    identity = Identity.generate(nacl.utils.random, difficulty=difficulty)
    save_identity(identity, path)
    return identity
