"""Revocations: service-signed withdrawal of grants, enforced by the agent (PROTOCOL.md section 7).

A revocation names grants by id and users by subject; a user's grants whose `not_before` is
earlier than the revocation's `before` are withdrawn. The agent keeps what it was told for as
long as a grant issued before it could still be alive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from bastion.mrzap.v1 import mrzap_pb2

from .clock import Clock, SystemClock
from .envelope import Domain, verify_signature
from .timestamps import from_timestamp
from .verification import Reason, VerificationError

__all__ = ["RevocationList", "verify_revocation"]


def verify_revocation(
    signed: mrzap_pb2.Signed, service_keys: Mapping[str, Ed25519PublicKey]
) -> mrzap_pb2.Revocation:
    """Verify a revocation's signature under a pinned service key and parse it."""
    key = service_keys.get(signed.key_id)
    if key is None:
        raise VerificationError(
            Reason.UNKNOWN_KEY, f"revocation signed by unpinned key {signed.key_id!r}"
        )
    payload = verify_signature(signed, key, Domain.REVOCATION)
    try:
        return mrzap_pb2.Revocation.FromString(payload)
    except DecodeError:
        raise VerificationError(Reason.MALFORMED, "revocation payload does not parse") from None


@dataclasses.dataclass
class RevocationList:
    """What has been revoked, for checking grants at SYN time and while channels run."""

    retention_s: float = 48 * 3600
    """How long an entry is kept; longer than any grant's session can last."""

    clock: Clock = dataclasses.field(default_factory=SystemClock)
    """Where the time comes from."""

    _grants: dict[str, float] = dataclasses.field(default_factory=dict)
    _subjects: dict[tuple[str, str], tuple[float, float]] = dataclasses.field(default_factory=dict)

    def add(self, revocation: mrzap_pb2.Revocation) -> None:
        """Record a verified revocation."""
        now = self.clock.now()
        self._forget_old(now)
        for grant_id in revocation.grant_ids:
            self._grants[grant_id] = now
        before = from_timestamp(revocation.before) if revocation.HasField("before") else now
        for subject in revocation.subjects:
            key = (subject.iss, subject.sub)
            previous_before, _ = self._subjects.get(key, (0.0, now))
            self._subjects[key] = (max(before, previous_before), now)

    def is_revoked(self, grant: mrzap_pb2.Grant) -> bool:
        """Whether `grant` has been revoked, by id or through its subject."""
        if grant.grant_id in self._grants:
            return True
        entry = self._subjects.get((grant.subject.iss, grant.subject.sub))
        return entry is not None and from_timestamp(grant.not_before) < entry[0]

    def _forget_old(self, now: float) -> None:
        horizon = now - self.retention_s
        self._grants = {g: t for g, t in self._grants.items() if t > horizon}
        self._subjects = {s: e for s, e in self._subjects.items() if e[1] > horizon}
