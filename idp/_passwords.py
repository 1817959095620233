"""Password (and client secret) hashing with scrypt from the standard library.

A hash is one self-describing string, `scrypt$ln=14,r=8,p=1$<salt>$<hash>` (salt and hash in
unpadded base64url), so the cost can be raised later without breaking stored hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

__all__ = ["check_password_hash", "hash_password", "verify_password"]

_SCHEME = "scrypt"
# 2**14 * 8 * 128 bytes = 16 MiB of memory per hash: inside OpenSSL's default 32 MiB limit, and
# about 50 ms here, which is plenty for a development IdP with a handful of users.
_LOG2_N = 14
_R = 8
_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_FORMAT = re.compile(
    r"^scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9_-]{16,128})\$(?P<hash>[A-Za-z0-9_-]{32,128})$"
)
# Bounds on the parameters we accept when reading a hash: a typo in a config file must not make
# every login allocate gigabytes.
_MAX_LOG2_N = 20
_MAX_R = 16
_MAX_P = 4


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=dklen,
        maxmem=2 * 128 * r * n * p + (1 << 20),
    )


def hash_password(password: str) -> str:
    """Hash `password` with a fresh random salt into one storable string."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, _LOG2_N, _R, _P, _HASH_BYTES)
    return f"{_SCHEME}$ln={_LOG2_N},r={_R},p={_P}${_b64encode(salt)}${_b64encode(digest)}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    match = _FORMAT.match(encoded)
    if match is None:
        raise ValueError("not a scrypt password hash (make one with `python -m idp hash-password`)")
    log2_n, r, p = int(match["ln"]), int(match["r"]), int(match["p"])
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError("scrypt parameters of the password hash are out of range")
    return log2_n, r, p, _b64decode(match["salt"]), _b64decode(match["hash"])


def check_password_hash(encoded: str) -> None:
    """Raise `ValueError` if `encoded` is not a hash that `verify_password` can check."""
    _parse(encoded)


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches the hash `encoded` (compared in constant time)."""
    log2_n, r, p, salt, expected = _parse(encoded)
    actual = _scrypt(password, salt, log2_n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)
