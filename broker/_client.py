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
    InvalidArgument,
    MrzapError,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unimplemented,
)
from mrzap.handshake import MAX_SYN_BYTES
from mrzap.timestamps import from_timestamp
from mrzap.verification import VerificationError
from policy import Effect, GrantIssuer, Reason, principal_of

from ._relay import ChannelEnd, ChannelRelay, RelayedChannel

__all__ = ["BrokerServicer", "PendingChannels"]

_Context = grpc.aio.ServicerContext[Any, Any]

#: How long the client has, after opening its call, to send the open message.
_OPEN_TIMEOUT_S = 10.0
#: How long the agent has to answer a SYN; it verifies two signatures and may fetch the JWKS.
_ANSWER_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Pending:
    user_id: str
    target_id: str
    expires_at: float
    """The grant's start_by: after it, no agent would accept the SYN anyway."""


class PendingChannels:
    """Channel ids handed out by OpenConnection and not used yet; each is good for one Channel."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def issue(self, user_id: str, target_id: str, expires_at: float) -> str:
        """A new channel id for `user_id` to reach `target_id` until `expires_at`."""
        now = self._clock()
        # Forget the expired ones here, so an unused id costs memory only until the next issue.
        for channel_id in [c for c, p in self._pending.items() if p.expires_at <= now]:
            del self._pending[channel_id]
        channel_id = str(uuid.uuid4())
        self._pending[channel_id] = _Pending(user_id, target_id, expires_at)
        return channel_id

    def take(self, channel_id: str, user_id: str) -> str:
        """Use up `channel_id`; its target. Raises NotFound for an unknown, used, expired or
        other user's id (one answer for all, so ids of others stay secret)."""
        pending = self._pending.get(channel_id)
        if pending is None or pending.user_id != user_id or pending.expires_at <= self._clock():
            raise NotFound(f"no channel {channel_id!r} is waiting to be opened by this user")
        del self._pending[channel_id]
        return pending.target_id


class BrokerServicer(pb_grpc.BrokerServiceServicer):
    """Serves OpenConnection and Channel; `caller` says who called (the interceptor's caller).

    ListConnections, CloseConnection, LockUser and UnlockUser still answer UNIMPLEMENTED.
    """

    def __init__(
        self,
        grants: GrantIssuer,
        relay: ChannelRelay,
        *,
        pending: PendingChannels | None = None,
        caller: Callable[[], Caller] = current_caller,
    ) -> None:
        self._grants = grants
        self._relay = relay
        self._pending = PendingChannels() if pending is None else pending
        self._caller = caller

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
        issued = await self._grants.issue_grant(
            principal_of(caller), access, caller.session.session.upk, context.peer() or ""
        )
        if issued.grant is None:
            raise PermissionDenied(_denial(issued.decision.reasons))
        grant = mrzap_pb2.Grant.FromString(issued.grant.payload)
        channel_id = self._pending.issue(
            caller.user_id, request.target_id, from_timestamp(grant.start_by)
        )
        return pb.OpenConnectionResponse(
            # Connection records are not kept yet: for a new connection the id is the one the
            # agent reports in its SYN-ACK (ActionResult.connection_id), so none is made up here.
            connection_id=request.connection_id,
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
        target_id = self._pending.take(channel_id, caller.user_id)
        _check_syn_names(first.open.syn, channel_id)
        channel = self._relay.open(channel_id, target_id, first.open.syn)
        pump = asyncio.ensure_future(self._client_frames(requests, channel))
        try:
            answer = await _next_or_timeout(channel.next(), _ANSWER_TIMEOUT_S)
            while True:
                if isinstance(answer, ChannelEnd):
                    if answer.error is not None:
                        raise answer.error
                    return
                yield answer
                answer = await channel.next()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, MrzapError):
                await pump
            self._relay.client_gone(channel, "the client left the channel")

    async def ListConnections(
        self, request: pb.ListConnectionsRequest, context: _Context
    ) -> pb.ListConnectionsResponse:
        """Not served yet: the broker keeps no connection records."""
        raise Unimplemented("connection records are not kept yet")

    async def CloseConnection(
        self, request: pb.CloseConnectionRequest, context: _Context
    ) -> pb.CloseConnectionResponse:
        """Not served yet: the broker keeps no connection records."""
        raise Unimplemented("connection records are not kept yet")

    async def LockUser(self, request: pb.LockUserRequest, context: _Context) -> pb.LockUserResponse:
        """Not served yet."""
        raise Unimplemented("locking users is not available yet")

    async def UnlockUser(
        self, request: pb.UnlockUserRequest, context: _Context
    ) -> pb.UnlockUserResponse:
        """Not served yet."""
        raise Unimplemented("locking users is not available yet")

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
