"""Revocations: service-signed withdrawals of grants, pushed to agents (PROTOCOL.md section 7).

`Revocations.revoke` has the policy role sign a Revocation (`GrantIssuer.issue_revocation`),
stores it, sends it to every agent connected to this broker on its control stream and tells its
listeners (the broker's `Connections`, which end the relayed client channels with ABORTED). The
agent verifies it under its pinned grant keys and ends matching connections at once.

A revocation stays in force while a grant it names could still be used: for grants by id until
their session expiry (the caller says when; by default the longest session), for users until
`before` plus the longest session. Until then it is re-sent to every agent right after its
Welcome (a restarted agent has forgotten it; PROTOCOL.md: "the broker sends every revocation
still in force, then anything else"). Several brokers share the store: each polls it for the
others' revocations and pushes them to its own agents.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from bastion.agent.v1 import agent_service_pb2 as agent_pb
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.clock import Clock, SystemClock
from mrzap.errors import InvalidArgument, MrzapError
from mrzap.periodic import Periodic
from mrzap.timestamps import from_timestamp
from policy import GrantIssuer

from ._connected import AgentStream, ConnectedAgents
from ._connection_store import ConnectionStore, StoredRevocation

__all__ = ["DEFAULT_MAX_SESSION_S", "RevocationListener", "Revocations", "RevokedHook"]

_log = logging.getLogger("mrzap.broker.revocations")

#: The longest a grant's session can last; the agent keeps revocations this long (48 h) too.
DEFAULT_MAX_SESSION_S = 48 * 3600.0
#: How often a broker looks for revocations issued by other brokers.
DEFAULT_POLL_S = 1.0
#: How often the store is rid of revocations no longer in force (any broker may do it).
_FORGET_EVERY_S = 300.0
#: Revocations are picked up by issue time; this much overlap covers brokers' clocks and
#: transactions that commit out of order (ids already known are skipped).
_POLL_OVERLAP_S = 30.0

#: Told of each revocation in force: (grant ids, subjects as (iss, sub), reason).
RevocationListener = Callable[[Sequence[str], Sequence[tuple[str, str]], str], object]
#: Awaited after this broker issued a revocation, e.g. to close the connection records it ends.
RevokedHook = Callable[[Sequence[str], Sequence[tuple[str, str]], str], Awaitable[object]]


class Revocations:
    """Issues revocations and keeps the agents of this broker told of those in force."""

    def __init__(
        self,
        grants: GrantIssuer,
        agents: ConnectedAgents,
        store: ConnectionStore,
        clock: Clock | None = None,
        *,
        max_session_s: float = DEFAULT_MAX_SESSION_S,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self._grants = grants
        self._agents = agents
        self._store = store
        self._clock = clock or SystemClock()
        self._max_session_s = max_session_s
        self._in_force: dict[str, StoredRevocation] = {}
        self._listeners: list[RevocationListener] = []
        self._hooks: list[RevokedHook] = []
        # The database may be briefly unreachable; the next poll retries.
        self._poller = Periodic(
            "broker-revocations",
            self.refresh,
            poll_s,
            log=_log,
            failed="could not read revocations",
        )
        self._last_issued: float | None = None
        self._last_forgotten = 0.0

    def listen(self, listener: RevocationListener) -> None:
        """Call `listener` for every revocation this broker learns of (its own and others')."""
        self._listeners.append(listener)

    def after_revoke(self, hook: RevokedHook) -> None:
        """Await `hook` after each revocation issued through this broker has gone out."""
        self._hooks.append(hook)

    async def revoke(
        self,
        *,
        grant_ids: Sequence[str] = (),
        subjects: Sequence[mrzap_pb2.Subject] = (),
        reason: str,
        expires_at: float | None = None,
    ) -> str:
        """Revoke grants by id and users' grants issued until now; the revocation's id.

        `expires_at` is when the named grants' sessions end at the latest (default: the longest
        session from now). Raises InvalidArgument when nothing is named; the policy role's errors
        (Unavailable...) pass through, and then nothing was revoked.
        """
        if not grant_ids and not subjects:
            raise InvalidArgument("name grants or users to revoke")
        if not reason:
            raise InvalidArgument("say why the grants are revoked")
        now = self._clock.now()
        signed = await self._grants.issue_revocation(list(grant_ids), list(subjects))
        revocation = mrzap_pb2.Revocation.FromString(signed.payload)
        kept_until = now + self._max_session_s
        if grant_ids and not subjects and expires_at is not None:
            kept_until = max(expires_at, now)
        if subjects:
            kept_until = max(kept_until, from_timestamp(revocation.before) + self._max_session_s)
        stored = StoredRevocation(
            id=revocation.revocation_id,
            signed=signed.SerializeToString(),
            issued_at=from_timestamp(revocation.issued_at),
            kept_until=kept_until,
        )
        async with self._store.transaction() as s:
            await self._store.add_revocation(s, stored, reason)
        _log.info(
            "revocation %s: %d grant(s), %d user(s): %s",
            stored.id,
            len(grant_ids),
            len(subjects),
            reason,
        )
        self._enforce(stored, revocation, reason)
        subject_keys = [(subject.iss, subject.sub) for subject in revocation.subjects]
        for hook in self._hooks:
            try:
                await hook(list(revocation.grant_ids), subject_keys, reason)
            except MrzapError as error:  # the revocation is out; only bookkeeping failed
                _log.error("after revocation %s: %s", stored.id, error)
        return stored.id

    def welcome(self, stream: AgentStream) -> None:
        """Send every revocation in force to an agent that has just been welcomed."""
        now = self._clock.now()
        for stored in sorted(self._in_force.values(), key=lambda r: r.issued_at):
            if stored.kept_until > now:
                stream.send(agent_pb.ControlResponse(revocation=stored.signed))

    def start(self) -> None:
        """Load the revocations in force, then poll for other brokers'; from the running loop."""
        self._poller.start()

    async def stop(self) -> None:
        """Stop polling."""
        await self._poller.stop()

    async def refresh(self) -> None:
        """Pick up revocations other brokers issued, enforce them here, forget expired ones."""
        now = self._clock.now()
        after = None if self._last_issued is None else self._last_issued - _POLL_OVERLAP_S
        for stored in await self._store.revocations_in_force(now, after):
            if stored.id not in self._in_force:
                try:
                    revocation = mrzap_pb2.Revocation.FromString(
                        mrzap_pb2.Signed.FromString(stored.signed).payload
                    )
                except Exception:  # our own table; a damaged row must not stop the rest
                    _log.exception("revocation %s in the store does not parse", stored.id)
                    continue
                self._enforce(stored, revocation, "revoked through another broker")
        self._in_force = {i: r for i, r in self._in_force.items() if r.kept_until > now}
        if now - self._last_forgotten >= _FORGET_EVERY_S:
            self._last_forgotten = now
            await self._store.forget_revocations(now)

    def _enforce(
        self, stored: StoredRevocation, revocation: mrzap_pb2.Revocation, reason: str
    ) -> None:
        if stored.id in self._in_force:
            return
        self._in_force[stored.id] = stored
        self._last_issued = max(self._last_issued or 0.0, stored.issued_at)
        message = agent_pb.ControlResponse(revocation=stored.signed)
        for stream in self._agents:
            stream.send(message)
        subjects = [(subject.iss, subject.sub) for subject in revocation.subjects]
        for listener in self._listeners:
            try:
                listener(list(revocation.grant_ids), subjects, reason)
            except Exception:  # one listener's failure must not keep the others uninformed
                _log.exception("a revocation listener failed")
