"""The Signed envelope with domain separation (PROTOCOL.md section 2).

`signature = Ed25519(key, DOMAIN || payload)`, where DOMAIN is a NUL-terminated ASCII string per
kind of object. The verifier checks the signature over the exact received bytes before anything
parses `payload`, so no canonical encoding is ever needed.
"""

from __future__ import annotations

import enum
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from bastion.mrzap.v1 import mrzap_pb2

from .verification import Reason, VerificationError

__all__ = ["Domain", "parse_signed", "sign", "signed_hash", "verify_signature"]


class Domain(enum.Enum):
    """The kinds of signed objects, each with its own domain string."""

    GRANT = b"mrzap/v1/grant\x00"
    SYN = b"mrzap/v1/syn\x00"
    SYNACK = b"mrzap/v1/synack\x00"
    REJECT = b"mrzap/v1/reject\x00"
    REVOCATION = b"mrzap/v1/revocation\x00"
    AGENT_AUTH = b"mrzap/v1/agent-auth\x00"
    RECORDING = b"mrzap/v1/recording\x00"


def sign(
    key: Ed25519PrivateKey, domain: Domain, payload: bytes, key_id: str = ""
) -> mrzap_pb2.Signed:
    """Sign the serialized `payload` for `domain`."""
    return mrzap_pb2.Signed(
        payload=payload, key_id=key_id, signature=key.sign(domain.value + payload)
    )


def verify_signature(
    signed: mrzap_pb2.Signed,
    key: Ed25519PublicKey,
    domain: Domain,
    reason: Reason = Reason.BAD_SIGNATURE,
) -> bytes:
    """Return `signed.payload` if its signature verifies under `key` for `domain`.

    Raises VerificationError with `reason` otherwise.
    """
    try:
        key.verify(signed.signature, domain.value + signed.payload)
    except InvalidSignature:
        raise VerificationError(
            reason, f"{domain.name.lower()} signature does not verify"
        ) from None
    return signed.payload


def parse_signed(raw: bytes) -> mrzap_pb2.Signed:
    """Parse the bytes of a Signed envelope, raising VerificationError(MALFORMED) on failure."""
    try:
        return mrzap_pb2.Signed.FromString(raw)
    except DecodeError:
        raise VerificationError(Reason.MALFORMED, "not a signed envelope") from None


def signed_hash(raw: bytes) -> bytes:
    """SHA-256 of the whole serialized Signed envelope, as received."""
    return hashlib.sha256(raw).digest()
