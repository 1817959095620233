"""Key files are private: written 0600, refused when others could read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mrzap import keys
from mrzap.errors import InvalidArgument, PermissionDenied


def test_save_and_load(tmp_path: Path) -> None:
    key = keys.generate_signing_key()
    path = tmp_path / "sub" / "agent.key"
    keys.save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = keys.load_private_key(path)
    assert keys.public_key_bytes(loaded) == keys.public_key_bytes(key)


def test_save_overwrites_atomically_and_stays_private(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    keys.save_private_key(path, keys.generate_signing_key())
    second = keys.generate_signing_key()
    keys.save_private_key(path, second)
    assert keys.public_key_bytes(keys.load_private_key(path)) == keys.public_key_bytes(second)
    assert [p.name for p in tmp_path.iterdir()] == ["agent.key"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_refuses_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "agent.key"
    keys.save_private_key(path, keys.generate_signing_key())
    os.chmod(path, mode)
    with pytest.raises(PermissionDenied, match="chmod 600"):
        keys.load_private_key(path)


def test_refuses_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    keys.save_private_key(real, keys.generate_signing_key())
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(OSError):  # noqa: PT011 - O_NOFOLLOW raises ELOOP
        keys.load_private_key(link)


def test_refuses_non_key_and_other_key_types(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    keys.write_secret_file(garbage, b"not a key")
    with pytest.raises(InvalidArgument, match="PEM"):
        keys.load_private_key(garbage)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other = tmp_path / "ec.key"
    keys.write_secret_file(
        other,
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    with pytest.raises(InvalidArgument, match="Ed25519"):
        keys.load_private_key(other)


def test_public_key_from_bytes_checks_length() -> None:
    raw = keys.public_key_bytes(keys.generate_signing_key())
    assert keys.public_key_bytes(keys.public_key_from_bytes(raw)) == raw
    with pytest.raises(InvalidArgument):
        keys.public_key_from_bytes(raw[:31])
