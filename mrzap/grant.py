"""Grants: the service root of trust (PROTOCOL.md section 4).

The policy role signs a grant after a valid PK token, recent MFA and an allow decision; the agent
verifies it against the service keys it pinned at registration (section 5, step 2).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from bastion.mrzap.v1 import mrzap_pb2

from .envelope import Domain, sign, verify_signature
from .errors import InvalidArgument
from .timestamps import from_timestamp
from .verification import Reason, VerificationError

__all__ = ["DEFAULT_START_WINDOW_S", "GrantSigner", "new_grant_id", "verify_grant"]

#: How long after issue the SYN must reach the agent, unless the policy says otherwise.
DEFAULT_START_WINDOW_S = 60.0


def new_grant_id() -> str:
    """A fresh random grant id."""
    return str(uuid.uuid4())


@dataclasses.dataclass(frozen=True)
class GrantSigner:
    """Signs grants with one service grant key."""

    key: Ed25519PrivateKey = dataclasses.field(repr=False)
    """The service grant key."""

    key_id: str
    """The id agents know the key's public half by."""

    def sign(self, grant: mrzap_pb2.Grant) -> mrzap_pb2.Signed:
        """Check `grant` is complete and consistent, stamp the key id, and sign it."""
        _check_complete(grant)
        stamped = mrzap_pb2.Grant()
        stamped.CopyFrom(grant)
        stamped.key_id = self.key_id
        return sign(self.key, Domain.GRANT, stamped.SerializeToString(), self.key_id)


def _check_complete(grant: mrzap_pb2.Grant) -> None:
    missing = [
        name
        for name, present in (
            ("grant_id", bool(grant.grant_id)),
            ("org_id", bool(grant.org_id)),
            ("subject", bool(grant.subject.iss and grant.subject.sub)),
            ("target_id", bool(grant.target_id)),
            ("verb", grant.verb != mrzap_pb2.VERB_UNSPECIFIED),
            ("not_before", grant.HasField("not_before")),
            ("start_by", grant.HasField("start_by")),
            ("session_expires_at", grant.HasField("session_expires_at")),
        )
        if not present
    ]
    if missing:
        raise InvalidArgument(f"grant is missing {', '.join(missing)}")
    if len(grant.upk) != 32 or len(grant.target_public_key) != 32:
        raise InvalidArgument("grant keys must be raw 32-byte Ed25519 public keys")
    not_before = from_timestamp(grant.not_before)
    start_by = from_timestamp(grant.start_by)
    if not not_before < start_by <= from_timestamp(grant.session_expires_at):
        raise InvalidArgument(
            "grant times must satisfy not_before < start_by <= session_expires_at"
        )


def verify_grant(
    signed: mrzap_pb2.Signed,
    service_keys: Mapping[str, Ed25519PublicKey],
    *,
    target_id: str,
    now: float,
) -> mrzap_pb2.Grant:
    """Verify a grant for this target at time `now` (PROTOCOL.md section 5, step 2).

    The signature is checked under a pinned service key before the payload is parsed; then
    `not_before <= now < start_by` and the target must be this one.
    """
    key = service_keys.get(signed.key_id)
    if key is None:
        raise VerificationError(
            Reason.GRANT_UNKNOWN_KEY, f"grant signed by unpinned key {signed.key_id!r}"
        )
    payload = verify_signature(signed, key, Domain.GRANT, Reason.GRANT_BAD_SIGNATURE)
    try:
        grant = mrzap_pb2.Grant.FromString(payload)
    except DecodeError:
        raise VerificationError(Reason.MALFORMED, "grant payload does not parse") from None
    if grant.key_id != signed.key_id:
        raise VerificationError(Reason.MALFORMED, "grant names another key than its envelope")
    if now < from_timestamp(grant.not_before):
        raise VerificationError(Reason.GRANT_NOT_YET_VALID, "grant is not valid yet")
    if now >= from_timestamp(grant.start_by):
        raise VerificationError(Reason.GRANT_START_BY_PASSED, "grant had to be used earlier")
    if grant.target_id != target_id:
        raise VerificationError(Reason.GRANT_WRONG_TARGET, "grant is for another target")
    return grant
