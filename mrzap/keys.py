"""Ed25519 signing keys: create, save and load, and the raw public-key encoding used on the wire.

Private key files are written atomically with mode 0600, and a key file that group or others
can read is refused rather than used (PROTOCOL.md section 1: keys are held by one party only).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import InvalidArgument, PermissionDenied

__all__ = [
    "generate_signing_key",
    "load_private_key",
    "public_key_bytes",
    "public_key_from_bytes",
    "save_private_key",
    "write_secret_file",
]


def generate_signing_key() -> Ed25519PrivateKey:
    """A new random Ed25519 key."""
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_bytes(raw: bytes) -> Ed25519PublicKey:
    """Parse a raw 32-byte public key, raising InvalidArgument on anything else."""
    if len(raw) != 32:
        raise InvalidArgument(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def write_secret_file(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write `data` to `path` atomically, readable and writable by the owner only.

    `sync=False` skips the fsync, for state that only has to outlive the process, not the machine.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it further; never widen past 0600
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
            if sync:
                out.flush()
                os.fsync(out.fileno())
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)


def save_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Save `key` as unencrypted PKCS#8 PEM with mode 0600."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret_file(path, pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 key saved by `save_private_key`.

    Raises PermissionDenied if group or others may read or write the file, and InvalidArgument
    if it is not an Ed25519 private key.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as source:
        mode = os.fstat(source.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionDenied(
                f"key file {path} has mode {stat.S_IMODE(mode):04o}; "
                f"it must not be accessible by group or others (chmod 600 {path})"
            )
        data = source.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidArgument(f"key file {path} does not hold a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"key file {path} does not hold an Ed25519 key")
    return key
