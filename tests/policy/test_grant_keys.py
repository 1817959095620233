"""The service grant keys: created once, kept private, stable across restarts, newest signs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.errors import InvalidArgument, PermissionDenied
from mrzap.grant import new_grant_id, verify_grant
from mrzap.testing import FixedClock
from mrzap.timestamps import to_timestamp
from policy import GrantKeyring

NOW = 1_900_000_000.0


def grant() -> mrzap_pb2.Grant:
    return mrzap_pb2.Grant(
        grant_id=new_grant_id(),
        org_id="org-1",
        subject=mrzap_pb2.Subject(iss="https://idp", sub="alice"),
        upk=keys.public_key_bytes(keys.generate_signing_key()),
        target_id="target-1",
        target_public_key=keys.public_key_bytes(keys.generate_signing_key()),
        verb=mrzap_pb2.VERB_SHELL,
        not_before=to_timestamp(NOW),
        start_by=to_timestamp(NOW + 60),
        session_expires_at=to_timestamp(NOW + 3600),
    )


def test_the_first_key_is_created_private_and_loaded_again(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    first = GrantKeyring.load_or_create(keys_dir, FixedClock(NOW))
    (key,) = first.public_keys
    assert key.created_at == NOW
    assert len(key.public_key) == 32
    path = keys_dir / f"grant-{key.key_id}.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    again = GrantKeyring.load_or_create(keys_dir, FixedClock(NOW + 86400))
    assert again.public_keys == first.public_keys


def test_grants_signed_by_the_newest_key_verify_against_the_pinned_public_keys(
    tmp_path: Path,
) -> None:
    keys_dir = tmp_path / "keys"
    old = GrantKeyring.load_or_create(keys_dir, FixedClock(NOW - 86400))
    newer_id = "20400101T000000Z-0a0b0c0d"
    keys.save_private_key(keys_dir / f"grant-{newer_id}.key", keys.generate_signing_key())
    ring = GrantKeyring.load_or_create(keys_dir)
    assert [k.key_id for k in ring.public_keys] == [old.public_keys[0].key_id, newer_id]
    signed = ring.signer().sign(grant())
    assert signed.key_id == newer_id
    pinned = {k.key_id: keys.public_key_from_bytes(k.public_key) for k in ring.public_keys}
    assert verify_grant(signed, pinned, target_id="target-1", now=NOW).org_id == "org-1"


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    (key,) = GrantKeyring.load_or_create(keys_dir).public_keys
    (keys_dir / f"grant-{key.key_id}.key").chmod(0o644)
    with pytest.raises(PermissionDenied, match="chmod 600"):
        GrantKeyring.load_or_create(keys_dir)


def test_a_misnamed_key_file_is_refused_rather_than_ignored(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys.save_private_key(keys_dir / "grant-mine.key", keys.generate_signing_key())
    with pytest.raises(InvalidArgument, match=r"grant-mine\.key"):
        GrantKeyring.load_or_create(keys_dir)
    assert list(keys_dir.iterdir()) == [keys_dir / "grant-mine.key"]


def test_a_keyring_needs_a_key() -> None:
    with pytest.raises(InvalidArgument, match="at least one key"):
        GrantKeyring({})
