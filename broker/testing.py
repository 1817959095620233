"""Fakes for the broker's tests: an in-memory `TargetDirectory`, a policy-free grant issuer.

`MemoryDirectory` stands in for the registry where a test exercises only the broker; it keeps the
states the registry would (ONLINE/OFFLINE and the broker route) and records every call, so tests
can check that a refusal changed nothing and that keepalives arrived in batches.
`StaticGrantIssuer` and `user_caller` stand in for the policy and auth roles in relay tests.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Collection, Mapping, Sequence

from auth import Caller, Session, SessionInfo, User
from auth._domain import MfaStatus
from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1.policy_service_pb2 import TargetAccess
from mrzap.envelope import Domain, sign
from mrzap.errors import NotFound
from mrzap.grant import GrantSigner, new_grant_id
from mrzap.timestamps import to_timestamp
from policy import Decision, Effect, IssuedGrant, Principal
from policy import Reason as PolicyReason

__all__ = ["MemoryDirectory", "MemoryTarget", "StaticGrantIssuer", "user_caller"]


@dataclasses.dataclass
class MemoryTarget:
    """A registered target as the fake registry sees it."""

    public_key: bytes
    state: str = "REGISTERED"
    broker_id: str = ""
    last_seen: float | None = None


@dataclasses.dataclass
class MemoryDirectory:
    """Targets in a dictionary, and a log of every call the broker made."""

    targets: dict[str, MemoryTarget] = dataclasses.field(default_factory=dict)
    refusals: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(target_id, message, address) of each refused agent."""
    connections: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(target_id, broker_id, address) of each authenticated stream."""
    disconnections: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(target_id, broker_id, reason) of each ended stream."""
    seen_batches: list[tuple[frozenset[str], float]] = dataclasses.field(default_factory=list)
    """(target ids, when) of each agents_seen call."""

    def add(self, target_id: str, public_key: bytes) -> None:
        """Register a target."""
        self.targets[target_id] = MemoryTarget(public_key)

    async def agent_public_key(self, target_id: str) -> bytes:
        """The key of a known target."""
        target = self.targets.get(target_id)
        if target is None:
            raise NotFound(f"no target {target_id!r}")
        return target.public_key

    async def agent_connected(self, target_id: str, broker_id: str, address: str) -> None:
        """The target goes ONLINE on `broker_id`."""
        self.connections.append((target_id, broker_id, address))
        target = self.targets[target_id]
        target.state, target.broker_id = "ONLINE", broker_id

    async def agents_seen(self, target_ids: Collection[str], when: float) -> set[str]:
        """Record one batch of keepalives; the ids of unknown targets."""
        self.seen_batches.append((frozenset(target_ids), when))
        for target_id in target_ids:
            if target_id in self.targets:
                self.targets[target_id].last_seen = when
        return set(target_ids) - self.targets.keys()

    async def agent_disconnected(self, target_id: str, broker_id: str, reason: str) -> None:
        """The target goes OFFLINE if it is still routed to `broker_id`."""
        self.disconnections.append((target_id, broker_id, reason))
        target = self.targets.get(target_id)
        if target is not None and target.state == "ONLINE" and target.broker_id == broker_id:
            target.state = "OFFLINE"

    async def agent_refused(self, target_id: str, message: str, address: str) -> None:
        """Record a refusal."""
        self.refusals.append((target_id, message, address))


class StaticGrantIssuer:
    """A `policy.GrantIssuer` that decides without policies: it allows every request (or denies
    all with `denial`) and signs grants with one key.

    It stands in for the policy role where a test exercises only the broker's relay; the real
    decision and its audit are the policy role's tests' business.
    """

    def __init__(
        self,
        signer: GrantSigner,
        agent_keys: Mapping[str, bytes],
        *,
        org_id: str = "org-1",
        denial: str = "",
        session_s: float = 3600.0,
    ) -> None:
        self._signer = signer
        self._agent_keys = agent_keys
        self._org_id = org_id
        self.denial = denial
        """When set, every request is denied with this reason."""
        self._session_s = session_s
        self.issued: list[mrzap_pb2.Grant] = []
        """Every grant signed, oldest first."""

    async def issue_grant(
        self, principal: Principal, access: TargetAccess, upk: bytes, address: str = ""
    ) -> IssuedGrant:
        """Allow and sign, or deny with `denial`."""
        now = float(int(time.time()))
        reasons = (
            (PolicyReason("", "", Effect.DENY, self.denial),)
            if self.denial
            else (PolicyReason("p-1", "everyone", Effect.ALLOW, "allowed"),)
        )
        decision = Decision(
            decision_id=str(uuid.uuid4()),
            allowed=not self.denial,
            reasons=reasons,
            policy_ids=() if self.denial else ("p-1",),
            max_session_duration=self._session_s,
            record_input=False,
            record_output=True,
            decided_at=now,
        )
        if self.denial:
            return IssuedGrant(decision, None)
        grant = mrzap_pb2.Grant(
            grant_id=new_grant_id(),
            org_id=self._org_id,
            subject=mrzap_pb2.Subject(
                iss=principal.issuer, sub=principal.subject, email=principal.email
            ),
            upk=upk,
            target_id=access.target_id,
            target_public_key=self._agent_keys[access.target_id],
            verb=access.verb,
            target_user=access.target_user,
            kube_groups=list(access.kube_groups),
            not_before=to_timestamp(now - 1),
            start_by=to_timestamp(now + 60),
            session_expires_at=to_timestamp(now + self._session_s),
        )
        if access.HasField("destination"):
            grant.destination.CopyFrom(access.destination)
        self.issued.append(grant)
        return IssuedGrant(decision, self._signer.sign(grant), grant.grant_id)

    async def issue_revocation(
        self,
        grant_ids: Sequence[str],
        subjects: Sequence[mrzap_pb2.Subject],
        before: float | None = None,
    ) -> mrzap_pb2.Signed:
        """A revocation signed with the same key."""
        now = time.time()
        revocation = mrzap_pb2.Revocation(
            revocation_id=str(uuid.uuid4()),
            grant_ids=list(grant_ids),
            subjects=list(subjects),
            before=to_timestamp(now if before is None else before),
            issued_at=to_timestamp(now),
        )
        return sign(
            self._signer.key,
            Domain.REVOCATION,
            revocation.SerializeToString(),
            self._signer.key_id,
        )


def user_caller(
    upk: bytes, *, issuer: str = "https://idp.test", subject: str = "alice-sub", email: str = ""
) -> Caller:
    """A logged-in user (past MFA) whose session is bound to the session key `upk`."""
    now = time.time()
    user_id = f"user-{subject}"
    user = User(user_id, issuer, subject, email or f"{subject}@example.com", (), now, now)
    session = Session(str(uuid.uuid4()), user_id, upk, now, now, now + 3600, now, None)
    return Caller.of_session(SessionInfo(session, user, False, MfaStatus.DONE))
