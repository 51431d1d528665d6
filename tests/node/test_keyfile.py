"""The node key file: created 0600, reloaded, refused when others can read it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from node.errors import KeyFileError
from node.keyfile import load_identity, load_or_create_identity


def test_created_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    """The first start creates a 0600 key; the next start loads the same identity."""
    path = tmp_path / "data" / "node.key"
    first = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_or_create_identity(path)
    assert first.node_id == second.node_id
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_refused_if_readable_by_others(tmp_path: Path, mode: int) -> None:
    """A key that group or others can access is refused with a message naming the fix."""
    path = tmp_path / "node.key"
    load_or_create_identity(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(path)


def test_garbage_and_missing_keys_are_clear_errors(tmp_path: Path) -> None:
    """A corrupt or missing key file gives a KeyFileError, not a traceback."""
    path = tmp_path / "node.key"
    with pytest.raises(KeyFileError, match="no key file"):
        load_identity(path)
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="not a Freehold key file"):
        load_identity(path)


def test_a_new_key_meets_the_difficulty_and_a_weak_one_is_replaced_not_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key made for a network with a proof of work meets it. A key made before (its
    id misses the work) is moved aside, still 0600, and a new one made: peers would
    refuse the old one (issue 18, row 1's key-file migration)."""
    from protocol.identity import meets_difficulty

    path = tmp_path / "node.key"
    old = load_or_create_identity(path)  # difficulty 0, as every key before
    while meets_difficulty(old.node_id, 6):  # the 1 in 64 old key that happens to pass
        path.unlink()
        old = load_or_create_identity(path)
    old_bytes = path.read_bytes()
    new = load_or_create_identity(path, difficulty=6)
    assert meets_difficulty(new.node_id, 6) and new.node_id != old.node_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kept = tmp_path / f"node.key.{old.node_id.short()}.weak"
    assert kept.read_bytes() == old_bytes
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert any("proof of work" in r.getMessage() for r in caplog.records)
    # The next start keeps the new key.
    assert load_or_create_identity(path, difficulty=6).node_id == new.node_id
    assert load_or_create_identity(path, difficulty=0).node_id == new.node_id
