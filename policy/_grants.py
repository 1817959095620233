"""Grants and revocations: the service root's signatures (PROTOCOL.md sections 4 and 7).

A grant is signed only for a connection request the decider has just allowed, for exactly the
decided (subject, target, verb, target user, destination, groups), bound to the user's session key,
with `start_by` a minute away and `session_expires_at` the decision's longest session. Every
decision is audited with the id of the grant it produced, if any.

`GrantIssuer` is what the broker asks. `LocalGrantIssuer` holds the grant keys (the policy role;
also the broker's issuer when both roles run in one process). `RemoteGrantIssuer` is the broker's
side in a split deployment: it calls `PolicyService.IssueGrant` over TLS with the service
credential and never holds a grant key.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import grpc
import grpc.aio

from audit import AuditLog
from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as pb
from bastion.policy.v1 import policy_service_pb2_grpc as pb_grpc
from mrzap.clock import Clock, SystemClock
from mrzap.envelope import Domain, sign
from mrzap.errors import FailedPrecondition, InvalidArgument, PermissionDenied, from_rpc_error
from mrzap.grant import DEFAULT_START_WINDOW_S, new_grant_id
from mrzap.timestamps import to_timestamp

from ._audit_events import change_event, decision_event
from ._authorize import Decider
from ._convert import (
    decision_from_message,
    principal_message,
    target_access_from_message,
)
from ._grant_keys import GrantKeyring
from ._model import Decision, Principal

__all__ = [
    "GrantIssuer",
    "IssuedGrant",
    "LocalGrantIssuer",
    "RemoteGrantIssuer",
    "TargetInfo",
    "TargetLookup",
]

_SERVICE = "/bastion.policy.v1.PolicyService/"
#: How long a call to a remote policy role may take.
_CALL_TIMEOUT_S = 10.0


class TargetInfo(Protocol):
    """What a grant needs of a registry target."""

    @property
    def id(self) -> str:
        """The target's id."""
        ...

    @property
    def environment_id(self) -> str:
        """The environment the target belongs to."""
        ...

    @property
    def public_key(self) -> bytes | None:
        """The agent's raw Ed25519 public key; None before registration."""
        ...


class TargetLookup(Protocol):
    """The registry, as far as decisions need it."""

    async def get_target(self, target_id: str) -> TargetInfo:
        """The target (NotFound if there is none)."""
        ...


@dataclasses.dataclass(frozen=True)
class IssuedGrant:
    """A decision and, when it allows, the signed grant."""

    decision: Decision
    grant: mrzap_pb2.Signed | None
    """The Grant in a Signed envelope; None when the decision denies."""
    grant_id: str = ""


class GrantIssuer(Protocol):
    """Decides connection requests and signs grants and revocations."""

    async def issue_grant(
        self, principal: Principal, access: pb.TargetAccess, upk: bytes, address: str = ""
    ) -> IssuedGrant:
        """Decide `access` for `principal`; sign a grant bound to `upk` only if allowed."""
        ...

    async def issue_revocation(
        self,
        grant_ids: Sequence[str],
        subjects: Sequence[mrzap_pb2.Subject],
        before: float | None = None,
    ) -> mrzap_pb2.Signed:
        """A signed revocation of grants by id, and of users' grants issued before `before`."""
        ...


class LocalGrantIssuer:
    """The policy role's issuer: decides with the decider and signs with the grant keys."""

    def __init__(
        self,
        decider: Decider,
        keyring: GrantKeyring,
        targets: TargetLookup,
        org_id: Callable[[], Awaitable[str]],
        audit: AuditLog,
        clock: Clock | None = None,
        start_window_s: float = DEFAULT_START_WINDOW_S,
    ) -> None:
        self._decider = decider
        self._keyring = keyring
        self._targets = targets
        self._org_id = org_id
        self._audit = audit
        self._clock = clock or SystemClock()
        self._start_window_s = start_window_s

    async def issue_grant(
        self, principal: Principal, access: pb.TargetAccess, upk: bytes, address: str = ""
    ) -> IssuedGrant:
        """Decide, audit, and sign a grant only when the decision allows."""
        if not (principal.issuer and principal.subject and principal.user_id):
            raise PermissionDenied("grants are for users who logged in; API keys cannot connect")
        if len(upk) != 32:
            raise InvalidArgument("upk must be the raw 32-byte Ed25519 session key")
        target = await self._targets.get_target(access.target_id)
        if target.public_key is None:
            raise FailedPrecondition(f"target {target.id} has not registered its agent yet")
        action = target_access_from_message(access, target.environment_id)
        decision = await self._decider.decide(principal, action)
        signed = None
        grant_id = ""
        if decision.allowed:
            grant_id = new_grant_id()
            grant = self._grant(grant_id, principal, access, upk, target.public_key, decision)
            grant.org_id = await self._org_id()
            signed = self._keyring.signer().sign(grant)
        await self._audit.record(
            decision_event(principal, action, decision, address, grant_id=grant_id)
        )
        return IssuedGrant(decision, signed, grant_id)

    def _grant(
        self,
        grant_id: str,
        principal: Principal,
        access: pb.TargetAccess,
        upk: bytes,
        target_public_key: bytes,
        decision: Decision,
    ) -> mrzap_pb2.Grant:
        now = decision.decided_at
        expires_at = now + decision.max_session_duration
        grant = mrzap_pb2.Grant(
            grant_id=grant_id,
            subject=mrzap_pb2.Subject(
                iss=principal.issuer, sub=principal.subject, email=principal.email
            ),
            upk=upk,
            target_id=access.target_id,
            target_public_key=target_public_key,
            verb=access.verb,
            target_user=access.target_user,
            kube_groups=list(access.kube_groups),
            not_before=to_timestamp(now),
            start_by=to_timestamp(min(now + self._start_window_s, expires_at)),
            session_expires_at=to_timestamp(expires_at),
            record=mrzap_pb2.RecordSettings(
                output=decision.record_output, input=decision.record_input
            ),
            policy_ids=list(decision.policy_ids),
        )
        if access.HasField("destination"):
            grant.destination.CopyFrom(access.destination)
        if principal.mfa_verified_at is not None:
            grant.mfa_verified_at.CopyFrom(to_timestamp(principal.mfa_verified_at))
        return grant

    async def issue_revocation(
        self,
        grant_ids: Sequence[str],
        subjects: Sequence[mrzap_pb2.Subject],
        before: float | None = None,
    ) -> mrzap_pb2.Signed:
        """Sign a revocation with the newest grant key, and audit it."""
        if not grant_ids and not subjects:
            raise InvalidArgument("name grants or users to revoke")
        for subject in subjects:
            if not (subject.iss and subject.sub):
                raise InvalidArgument("a revoked subject needs iss and sub")
        now = self._clock.now()
        revocation = mrzap_pb2.Revocation(
            revocation_id=str(uuid.uuid4()),
            grant_ids=list(grant_ids),
            subjects=list(subjects),
            before=to_timestamp(now if before is None else before),
            issued_at=to_timestamp(now),
        )
        signer = self._keyring.signer()
        signed = sign(signer.key, Domain.REVOCATION, revocation.SerializeToString(), signer.key_id)
        await self._audit.record(
            change_event(
                _SERVICE + "IssueRevocation",
                Principal(),
                "",
                f"revocation {revocation.revocation_id} signed: {len(grant_ids)} grant(s), "
                f"users {', '.join(s.email or s.sub for s in subjects) or 'none'}",
            )
        )
        return signed


class RemoteGrantIssuer:
    """The broker's issuer in a split deployment: asks the policy role over gRPC."""

    def __init__(
        self, channel: grpc.aio.Channel, credential_metadata: Sequence[tuple[str, str]]
    ) -> None:
        self._stub = pb_grpc.PolicyServiceStub(channel)
        self._metadata = tuple(credential_metadata)

    async def issue_grant(
        self, principal: Principal, access: pb.TargetAccess, upk: bytes, address: str = ""
    ) -> IssuedGrant:
        """IssueGrant on the policy role; the grant, if any, comes back signed."""
        try:
            response = await self._stub.IssueGrant(
                pb.IssueGrantRequest(
                    principal=principal_message(principal), access=access, upk=upk
                ),
                metadata=self._metadata,
                timeout=_CALL_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        decision = decision_from_message(response.decision)
        if not response.HasField("grant"):
            return IssuedGrant(decision, None)
        grant = mrzap_pb2.Grant.FromString(response.grant.payload)
        return IssuedGrant(decision, response.grant, grant.grant_id)

    async def issue_revocation(
        self,
        grant_ids: Sequence[str],
        subjects: Sequence[mrzap_pb2.Subject],
        before: float | None = None,
    ) -> mrzap_pb2.Signed:
        """IssueRevocation on the policy role."""
        request = pb.IssueRevocationRequest(grant_ids=list(grant_ids), subjects=list(subjects))
        if before is not None:
            request.before.CopyFrom(to_timestamp(before))
        try:
            response = await self._stub.IssueRevocation(
                request, metadata=self._metadata, timeout=_CALL_TIMEOUT_S
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return response.revocation
