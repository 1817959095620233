"""Locking users: BrokerService.LockUser and UnlockUser, an administrator's emergency stop.

LockUser does three things, in this order:
1. the auth role locks the user (`AuthService.lock_user`): their sessions end, and from now on
   they can neither log in, refresh, nor make any call, so they cannot get a new grant;
2. a service-signed revocation of every grant of the user's subject issued until now goes to
   every agent on its control stream (PROTOCOL.md section 7; `Revocations.revoke`), and the agents
   end the user's connections at once, whatever the broker relaying them;
3. the audit log records the lock with who locked, why, and the revocation's id.
The lock comes first so no grant can be issued after the revocation's cut-off. If the
revocation fails, the lock stands (and is audited) and the error reaches the administrator, who
can lock again to retry.

UnlockUser lifts the lock: the user may log in again. Sessions and grants the lock ended stay
ended (the revocation stays in force until the grants it names have expired).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from audit import AuditLog
from auth import AuthService, Caller, User
from bastion.mrzap.v1 import mrzap_pb2
from policy import change_event, principal_of

__all__ = ["LockOutcome", "Revoker", "UserLocks"]

_SERVICE = "/bastion.broker.v1.BrokerService/"


class Revoker(Protocol):
    """What locking needs of `broker.Revocations`: sign a revocation and push it to every agent."""

    async def revoke(
        self,
        *,
        grant_ids: Sequence[str] = (),
        subjects: Sequence[mrzap_pb2.Subject] = (),
        reason: str,
    ) -> str:
        """Revoke the grants named and every grant of `subjects`; the revocation's id."""
        ...


#: The ids of a user's live connections (the broker's connection records), by user id.
LiveConnections = Callable[[str], Awaitable[Sequence[str]]]


@dataclasses.dataclass(frozen=True)
class LockOutcome:
    """What a lock did: the user, the revocation sent and the connections it ends."""

    user: User
    """The user, now locked."""
    revocation_id: str
    """The id of the signed revocation sent to the agents."""
    connection_ids: tuple[str, ...]
    """The user's connections that were live when the revocation went out."""


class UserLocks:
    """Locks and unlocks users for the broker's servicer."""

    def __init__(
        self,
        auth: AuthService,
        revocations: Revoker,
        audit: AuditLog,
        live_connections: LiveConnections | None = None,
    ) -> None:
        self._auth = auth
        self._revocations = revocations
        self._audit = audit
        self._live_connections = live_connections

    async def lock(self, caller: Caller, name: str, reason: str, address: str) -> LockOutcome:
        """Lock the user `name` (id or email) and revoke every grant they hold."""
        user = await self._auth.lock_user(caller, name, reason)
        who = user.email or user.id
        lock_reason = user.lock.reason if user.lock is not None else ""
        because = f": {lock_reason}" if lock_reason else ""
        # Read before the revocation, which closes these records.
        live: Sequence[str] = (
            [] if self._live_connections is None else await self._live_connections(user.id)
        )
        try:
            revocation_id = await self._revocations.revoke(
                subjects=[mrzap_pb2.Subject(iss=user.issuer, sub=user.subject, email=user.email)],
                reason=f"user {who} locked by {caller.display_name}{because}",
            )
        except Exception as error:
            await self._record(
                "LockUser",
                caller,
                address,
                f"user {who} locked{because}; revoking their grants failed: {error}",
            )
            raise
        await self._record(
            "LockUser",
            caller,
            address,
            f"user {who} locked{because}; revocation {revocation_id} sent to the agents",
        )
        return LockOutcome(user, revocation_id, tuple(live))

    async def unlock(self, caller: Caller, name: str, address: str) -> User:
        """Let the user `name` (id or email) log in again."""
        user = await self._auth.unlock_user(caller, name)
        await self._record("UnlockUser", caller, address, f"user {user.email or user.id} unlocked")
        return user

    async def check_not_locked(self, user_id: str) -> None:
        """PermissionDenied if the user is locked now.

        For a grant just signed: a lock that landed after the call was authenticated may have
        revoked (with `before` = its time) only grants older than this one, so a grant signed
        for a user locked meanwhile must not leave the broker.
        """
        await self._auth.check_not_locked(user_id)

    async def _record(self, method: str, caller: Caller, address: str, message: str) -> None:
        await self._audit.record(
            change_event(_SERVICE + method, principal_of(caller), address, message)
        )
