"""The registry's secrets: registration keys and activation tokens.

Each kind has its own prefix (`mzr_` registration keys, `mza_` activation tokens; API keys are
`mzk_`), so a secret handed to the wrong call is recognised without a lookup and the error can
say what it is. Only SHA-256 hashes of secrets are stored, and hashes are what gets compared.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from auth import API_KEY_PREFIX

__all__ = [
    "ACTIVATION_TOKEN_PREFIX",
    "REGISTRATION_KEY_PREFIX",
    "hash_secret",
    "hashes_match",
    "is_activation_token",
    "new_activation_token",
    "new_registration_key_id",
    "new_registration_key_secret",
    "parse_registration_key",
    "secret_kind",
]

REGISTRATION_KEY_PREFIX = "mzr_"
ACTIVATION_TOKEN_PREFIX = "mza_"  # noqa: S105 - a public prefix, not a secret

_RANDOM = r"[A-Za-z0-9_-]{43}"  # token_urlsafe(32)
_REGISTRATION_KEY = re.compile(rf"(mzr_[0-9a-f]{{16}})_{_RANDOM}")
_ACTIVATION_TOKEN = re.compile(rf"mza_{_RANDOM}")
_KINDS = {
    REGISTRATION_KEY_PREFIX: "a registration key",
    ACTIVATION_TOKEN_PREFIX: "an activation token",
    API_KEY_PREFIX: "an API key",
}


def hash_secret(secret: str) -> bytes:
    """The SHA-256 of a secret: what the registry stores and compares."""
    return hashlib.sha256(secret.encode()).digest()


def hashes_match(stored: bytes, secret: str) -> bool:
    """Whether `secret` hashes to `stored`, compared in constant time."""
    return hmac.compare_digest(stored, hash_secret(secret))


def secret_kind(secret: str) -> str:
    """What a secret looks like, in words ("a registration key"...), or "" if unknown."""
    return next((kind for prefix, kind in _KINDS.items() if secret.startswith(prefix)), "")


def new_registration_key_id() -> str:
    """A new registration key id; the public prefix of the key's secret."""
    return REGISTRATION_KEY_PREFIX + secrets.token_hex(8)


def new_registration_key_secret(key_id: str) -> str:
    """A new secret for the registration key `key_id`."""
    return f"{key_id}_{secrets.token_urlsafe(32)}"


def parse_registration_key(secret: str) -> str | None:
    """The key id of a well-formed registration key secret, else None."""
    match = _REGISTRATION_KEY.fullmatch(secret)
    return None if match is None else match.group(1)


def new_activation_token() -> str:
    """A new single-use activation token."""
    return ACTIVATION_TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_activation_token(token: str) -> bool:
    """Whether `token` is a well-formed activation token."""
    return _ACTIVATION_TOKEN.fullmatch(token) is not None
