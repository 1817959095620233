"""The client's side of the broker: `BrokerService.OpenConnection` and `Channel` (DESIGN.md flow 4).

OpenConnection turns the caller's session into a policy decision and, when allowed, a grant
signed by the policy role (`policy.GrantIssuer`; the decision is audited there with its reasons),
bound to the session key the user logged in with. It hands out a channel id that only this user
may use, once, for this target, until the grant's `start_by`.

Channel then relays one handshake and its frames through `ChannelRelay`:

    client: open{channel_id, syn}          → agent: ChannelOpen
    agent:  ChannelAnswer{syn_ack|reject}  → client: syn_ack | reject (then OK)
    both:   frames, until the agent closes the channel (OK), the broker loses the agent
            (UNAVAILABLE) or the client cancels (the agent hears ChannelClose; a shell stays)

The broker checks that the SYN names the channel id it issued (so a channel id cannot be used for
another target) but nothing else in it: the agent verifies the SYN itself (PROTOCOL.md §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import grpc.aio
from google.protobuf.message import DecodeError

from auth import Caller, current_caller
from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from mrzap.envelope import parse_signed
from mrzap.errors import (
    Aborted,
    InvalidArgument,
    MrzapError,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unimplemented,
)
from mrzap.handshake import MAX_SYN_BYTES
from mrzap.timestamps import from_timestamp, to_timestamp
from mrzap.verification import VerificationError
from policy import Effect, GrantIssuer, Reason, principal_of

from ._connection_store import ConnectionQuery, ConnectionRecord, ConnectionState
from ._connections import ChannelContext, ChannelOutcome, Connections
from ._locks import UserLocks
from ._relay import ChannelEnd, ChannelRelay, RelayedChannel
from ._revocations import Revocations

__all__ = ["BrokerServicer", "PendingChannels"]

_Context = grpc.aio.ServicerContext[Any, Any]

#: How long the client has, after opening its call, to send the open message.
_OPEN_TIMEOUT_S = 10.0
#: How long the agent has to answer a SYN; it verifies two signatures and may fetch the JWKS.
_ANSWER_TIMEOUT_S = 30.0
#: How long a finished channel waits for the client to half-close before ending the call.
_HALF_CLOSE_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class PendingChannel:
    """A channel id handed out by OpenConnection."""

    user_id: str
    target_id: str
    expires_at: float
    """The grant's start_by: after it, no agent would accept the SYN anyway."""
    context: ChannelContext | None = None
    """The connection it opens or re-attaches, when the broker keeps connection records."""


class PendingChannels:
    """Channel ids handed out by OpenConnection and not used yet; each is good for one Channel."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._pending: dict[str, PendingChannel] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def issue(
        self,
        user_id: str,
        target_id: str,
        expires_at: float,
        *,
        channel_id: str = "",
        context: ChannelContext | None = None,
    ) -> str:
        """A channel id (new, unless given) for `user_id` to reach `target_id` until
        `expires_at`."""
        now = self._clock()
        # Forget the expired ones here, so an unused id costs memory only until the next issue.
        for expired in [c for c, p in self._pending.items() if p.expires_at <= now]:
            del self._pending[expired]
        channel_id = channel_id or str(uuid.uuid4())
        self._pending[channel_id] = PendingChannel(user_id, target_id, expires_at, context)
        return channel_id

    def claim(self, channel_id: str, user_id: str) -> PendingChannel:
        """Use up `channel_id`. Raises NotFound for an unknown, used, expired or other user's id
        (one answer for all, so ids of others stay secret)."""
        pending = self._pending.get(channel_id)
        if pending is None or pending.user_id != user_id or pending.expires_at <= self._clock():
            raise NotFound(f"no channel {channel_id!r} is waiting to be opened by this user")
        del self._pending[channel_id]
        return pending

    def take(self, channel_id: str, user_id: str) -> str:
        """`claim`, for its target only."""
        return self.claim(channel_id, user_id).target_id


class BrokerServicer(pb_grpc.BrokerServiceServicer):
    """Serves OpenConnection and Channel; `caller` says who called (the interceptor's caller).

    With `connections` the broker keeps connection records (ListConnections; re-attach checks)
    and with `revocations` it can end them (CloseConnection); without them those RPCs answer
    UNIMPLEMENTED (the relay tests' broker). LockUser and UnlockUser delegate to `locks`
    (`UserLocks`), and answer UNIMPLEMENTED without it.
    """

    def __init__(
        self,
        grants: GrantIssuer,
        relay: ChannelRelay,
        *,
        pending: PendingChannels | None = None,
        caller: Callable[[], Caller] = current_caller,
        locks: UserLocks | None = None,
        connections: Connections | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self._grants = grants
        self._relay = relay
        self._pending = PendingChannels() if pending is None else pending
        self._caller = caller
        self._locks = locks
        self._connections = connections
        self._revocations = revocations

    async def OpenConnection(
        self, request: pb.OpenConnectionRequest, context: _Context
    ) -> pb.OpenConnectionResponse:
        """Decide the request; when allowed, a signed grant and a channel id."""
        caller = self._caller()
        if caller.session is None:
            raise PermissionDenied("only users who logged in can connect; API keys cannot")
        if not request.target_id:
            raise InvalidArgument("name the target to connect to")
        if request.verb == mrzap_pb2.VERB_UNSPECIFIED:
            raise InvalidArgument("say what to do on the target (the verb)")
        if not request.target_user:
            raise InvalidArgument("name the target user to act as")
        access = policy_pb.TargetAccess(
            target_id=request.target_id,
            verb=request.verb,
            target_user=request.target_user,
            kube_groups=list(request.kube_groups),
        )
        if request.HasField("destination"):
            access.destination.CopyFrom(request.destination)
        reattaching: ConnectionRecord | None = None
        if request.connection_id and self._connections is not None:
            # Before the grant: no grant is signed for re-attaching to a shell that is not the
            # caller's (the agent would refuse it too, but a grant should not exist for it).
            reattaching = await self._connections.check_reattach(
                request.connection_id, caller.user_id, request.target_id, request.target_user
            )
        issued = await self._grants.issue_grant(
            principal_of(caller), access, caller.session.session.upk, context.peer() or ""
        )
        if issued.grant is None:
            raise PermissionDenied(_denial(issued.decision.reasons))
        if self._locks is not None:
            # A user locked since this call was authenticated: the lock's revocation may be
            # older than this grant, so the grant must not reach the client.
            await self._locks.check_not_locked(caller.user_id)
        grant = mrzap_pb2.Grant.FromString(issued.grant.payload)
        # A new connection's id is the channel id of the channel that opens it; the agent uses
        # the SYN's channel id the same way (ActionResult.connection_id).
        channel_id = str(uuid.uuid4())
        connection_id = request.connection_id or channel_id
        channel_context = None
        if self._connections is not None:
            channel_context = ChannelContext(
                channel_id=channel_id,
                connection_id=connection_id,
                user_id=caller.user_id,
                subject_iss=grant.subject.iss,
                subject_sub=grant.subject.sub,
                target_id=request.target_id,
                verb=request.verb,
                target_user=request.target_user,
                grant_id=grant.grant_id,
            )
            await self._connections.opened(channel_context, grant, grant.subject.email, reattaching)
        self._pending.issue(
            caller.user_id,
            request.target_id,
            from_timestamp(grant.start_by),
            channel_id=channel_id,
            context=channel_context,
        )
        return pb.OpenConnectionResponse(
            connection_id=connection_id,
            channel_id=channel_id,
            grant=issued.grant,
            agent_public_key=grant.target_public_key,
        )

    async def Channel(
        self, requests: AsyncIterator[pb.ChannelRequest], context: _Context
    ) -> AsyncIterator[pb.ChannelResponse]:
        """Relay one channel: the SYN, the agent's answer, then frames both ways."""
        caller = self._caller()
        first = await _first_request(requests)
        channel_id = first.open.channel_id
        pending = self._pending.claim(channel_id, caller.user_id)
        records = self._connections if pending.context is not None else None
        outcome = ChannelOutcome.UNANSWERED
        try:
            _check_syn_names(first.open.syn, channel_id)
            channel = self._relay.open(channel_id, pending.target_id, first.open.syn)
        except MrzapError:
            if records is not None and pending.context is not None:
                records.ended(pending.context, outcome)
            raise
        if records is not None and pending.context is not None:
            records.relaying(pending.context, channel)
        pump = asyncio.ensure_future(self._client_frames(requests, channel))
        try:
            answer = await _next_or_timeout(channel.next(), _ANSWER_TIMEOUT_S)
            while True:
                if isinstance(answer, ChannelEnd):
                    if isinstance(answer.error, Aborted):
                        outcome = ChannelOutcome.ABORTED
                    elif answer.error is None and outcome is ChannelOutcome.LEFT:
                        outcome = (
                            ChannelOutcome.AGENT_DETACHED
                            if answer.detached
                            else ChannelOutcome.AGENT_CLOSED
                        )
                    if answer.error is not None:
                        raise answer.error
                    # Returning while the client still writes makes grpcio end the call INTERNAL
                    # and drop the frames queued for it (the exit status among them): wait,
                    # bounded, for the client's half-close first.
                    await asyncio.wait({pump}, timeout=_HALF_CLOSE_TIMEOUT_S)
                    return
                kind = answer.WhichOneof("frame")
                if kind != "channel_frame" and records is not None and pending.context is not None:
                    # The answer: the connection opens (or is refused) as it passes through.
                    rejected = kind == "reject"
                    records.answered(pending.context, answer.reject if rejected else None)
                    outcome = ChannelOutcome.REJECTED if rejected else ChannelOutcome.LEFT
                yield answer
                answer = await channel.next()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, MrzapError):
                await pump
            self._relay.client_gone(channel, "the client left the channel")
            if records is not None and pending.context is not None:
                records.ended(pending.context, outcome)

    async def ListConnections(
        self, request: pb.ListConnectionsRequest, context: _Context
    ) -> pb.ListConnectionsResponse:
        """The caller's connections, or (administrators) a named user's or everyone's."""
        caller = self._caller()
        records = self._records()
        if request.all_users and request.user_id:
            raise InvalidArgument("name a user or ask for all users, not both")
        if (request.all_users or request.user_id not in ("", caller.user_id)) and not (
            caller.is_admin
        ):
            raise PermissionDenied("only administrators may list other users' connections")
        user_id = "" if request.all_users else (request.user_id or caller.user_id)
        if not user_id and not request.all_users:
            raise InvalidArgument("an API key has no connections: name a user or ask for all")
        states = [ConnectionState(state) for state in request.states if _known_state(state)]
        if len(states) != len(request.states):
            raise InvalidArgument("states must be PENDING, OPEN, DETACHED or CLOSED")
        query = ConnectionQuery(
            user_id=user_id,
            target_id=request.target_id,
            states=states
            or (
                ConnectionState.PENDING,
                ConnectionState.OPEN,
                ConnectionState.DETACHED,
            ),
        )
        page, next_token = await records.page(query, request.page_size, request.page_token)
        return pb.ListConnectionsResponse(
            connections=[_connection_message(record) for record in page],
            next_page_token=next_token,
        )

    async def CloseConnection(
        self, request: pb.CloseConnectionRequest, context: _Context
    ) -> pb.CloseConnectionResponse:
        """Revoke the connection's grants (the agents end it at once) and close its record."""
        caller = self._caller()
        records = self._records()
        if self._revocations is None:
            raise Unimplemented("closing connections is not served by this broker")
        if not request.connection_id:
            raise InvalidArgument("name the connection to close")
        record = await records.get(request.connection_id)
        if record is None or (record.user_id != caller.user_id and not caller.is_admin):
            # One answer for "none" and "not yours", so ids of others' connections stay secret.
            raise NotFound(f"no connection {request.connection_id!r} of this user")
        if record.state is not ConnectionState.CLOSED:
            who = "its user" if record.user_id == caller.user_id else caller.display_name
            reason = f"closed by {who}" + (f": {request.reason}" if request.reason else "")
            # The revocation first: if it cannot be signed, nothing claims the connection ended.
            await self._revocations.revoke(
                grant_ids=record.grant_ids, reason=reason, expires_at=record.expires_at
            )
            await records.close_revoked(record.grant_ids, (), reason, caller.user_id)
            record = await records.get(record.id) or record
        return pb.CloseConnectionResponse(connection=_connection_message(record))

    def _records(self) -> Connections:
        if self._connections is None:
            raise Unimplemented("connection records are not kept by this broker")
        return self._connections

    async def LockUser(self, request: pb.LockUserRequest, context: _Context) -> pb.LockUserResponse:
        """Lock a user and revoke their grants on every agent (administrators only)."""
        if not request.user:
            raise InvalidArgument("name the user to lock by id or email")
        locked = await self._user_locks().lock(
            self._caller(), request.user, request.reason, context.peer() or ""
        )
        return pb.LockUserResponse(
            revocation_id=locked.revocation_id, closed_connection_ids=locked.connection_ids
        )

    async def UnlockUser(
        self, request: pb.UnlockUserRequest, context: _Context
    ) -> pb.UnlockUserResponse:
        """Let a locked user log in again (administrators only)."""
        if not request.user:
            raise InvalidArgument("name the user to unlock by id or email")
        await self._user_locks().unlock(self._caller(), request.user, context.peer() or "")
        return pb.UnlockUserResponse()

    def _user_locks(self) -> UserLocks:
        if self._locks is None:
            raise Unimplemented("locking users is not served by this broker")
        return self._locks

    async def _client_frames(
        self, requests: AsyncIterator[pb.ChannelRequest], channel: RelayedChannel
    ) -> None:
        """Relay the client's frames to the agent until its side of the call ends."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            async for request in requests:
                if request.WhichOneof("frame") != "channel_frame":
                    # Only one open per call; anything else ends the channel for both sides.
                    self._relay.refuse_client(
                        channel, InvalidArgument("after open, a channel carries only frames")
                    )
                    return
                await self._relay.to_agent(channel, request.channel_frame)


def _known_state(state: int) -> bool:
    return state in {member.value for member in ConnectionState}


def _connection_message(record: ConnectionRecord) -> pb.Connection:
    message = pb.Connection(
        id=record.id,
        target_id=record.target_id,
        user_id=record.user_id,
        subject=mrzap_pb2.Subject(
            iss=record.subject_iss, sub=record.subject_sub, email=record.subject_email
        ),
        verb=mrzap_pb2.Verb.ValueType(record.verb),
        target_user=record.target_user,
        state=pb.ConnectionState.ValueType(record.state.value),
        grant_ids=list(record.grant_ids),
        broker_id=record.broker_id,
        create_time=to_timestamp(record.created_at),
        expire_time=to_timestamp(record.expires_at),
        recorded=record.recorded,
    )
    if record.destination:
        message.destination.ParseFromString(record.destination)
    if record.closed_at is not None:
        message.close_time.CopyFrom(to_timestamp(record.closed_at))
    return message


def _denial(reasons: Sequence[Reason]) -> str:
    messages = [reason.message for reason in reasons if reason.effect is Effect.DENY]
    return "; ".join(messages) if messages else "no policy allows this connection"


async def _first_request(requests: AsyncIterator[pb.ChannelRequest]) -> pb.ChannelRequest:
    try:
        first = await asyncio.wait_for(anext(requests), _OPEN_TIMEOUT_S)
    except TimeoutError:
        raise InvalidArgument(f"no open message within {_OPEN_TIMEOUT_S:g} s") from None
    except StopAsyncIteration:
        raise InvalidArgument("the channel ended before its open message") from None
    if first.WhichOneof("frame") != "open":
        raise InvalidArgument("the first message of a channel must be open")
    if not first.open.channel_id or not first.open.syn:
        raise InvalidArgument("open needs the channel id and the SYN")
    if len(first.open.syn) > MAX_SYN_BYTES:
        raise InvalidArgument(f"the SYN is larger than {MAX_SYN_BYTES} bytes")
    return first


def _check_syn_names(raw_syn: bytes, channel_id: str) -> None:
    """The SYN must be for the channel id issued; the agent checks everything else."""
    try:
        syn = mrzap_pb2.Syn.FromString(parse_signed(raw_syn).payload)
    except (VerificationError, DecodeError):
        raise InvalidArgument("the SYN is not a signed Syn") from None
    if syn.channel_id != channel_id:
        raise InvalidArgument("the SYN names another channel id than the open message")


async def _next_or_timeout(
    waiting: Coroutine[Any, Any, pb.ChannelResponse | ChannelEnd], timeout_s: float
) -> pb.ChannelResponse | ChannelEnd:
    try:
        result = await asyncio.wait_for(waiting, timeout_s)
    except TimeoutError:
        raise Unavailable(f"the target's agent did not answer within {timeout_s:g} s") from None
    return result
