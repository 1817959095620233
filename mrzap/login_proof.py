"""Proof that the caller of Login or RefreshSession holds the session key its PK token names.

A PK token alone is not secret enough to start a session with: the client also signs the
token's hash and a timestamp with the session key, under the domain `mrzap/v1/login`. The
service accepts each proof once, within the same clock window as a SYN. (This domain string is
an addition to PROTOCOL.md section 2, which signs no login message.)
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.mrzap.v1 import mrzap_pb2

from .keys import public_key_from_bytes

__all__ = ["LOGIN_DOMAIN", "login_proof_message", "sign_login_proof", "verify_login_proof"]

LOGIN_DOMAIN = b"mrzap/v1/login\x00"


def login_proof_message(purpose: str, pk_token: mrzap_pb2.PkToken, timestamp_ms: int) -> bytes:
    """The signed bytes: domain, purpose, the tokens' hash and the timestamp."""
    tokens = hashlib.sha256(
        pk_token.id_token.encode() + b"\x00" + pk_token.refreshed_id_token.encode()
    ).digest()
    return LOGIN_DOMAIN + purpose.encode() + b"\x00" + tokens + timestamp_ms.to_bytes(8, "big")


def sign_login_proof(
    key: Ed25519PrivateKey, purpose: str, pk_token: mrzap_pb2.PkToken, timestamp_ms: int
) -> bytes:
    """The session key's signature for `purpose` ("login" or "refresh")."""
    return key.sign(login_proof_message(purpose, pk_token, timestamp_ms))


def verify_login_proof(
    purpose: str, pk_token: mrzap_pb2.PkToken, timestamp_ms: int, signature: bytes
) -> bool:
    """Whether `signature` is the PK token's session key signing this proof."""
    try:
        key = public_key_from_bytes(pk_token.upk)
        key.verify(signature, login_proof_message(purpose, pk_token, timestamp_ms))
    except (InvalidSignature, ValueError):
        return False
    return True
