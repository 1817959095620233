"""The client side of a channel to a target (PROTOCOL.md sections 5 and 6), over grpc.aio.

One channel, as `zli connect`, `zli exec` and `zli connections attach` use it (and, later,
tunnels): `open_channel` asks the broker for a grant (`OpenConnection`: a policy denial fails here
with the policy's reasons), builds the SYN from the user's zli login (session key and PK token),
opens the `Channel` call, and checks the agent's answer with the agent key the grant names: a
signed SYN-ACK gives the channel keys, a signed Reject becomes an error with the agent's reason
code. Every later message is an AEAD frame (`mrzap.channel`) with credit-based flow control
(`zli._flow`): stdin never exceeds the agent's credit, and the agent gets more credit as the
output it sent is written out.

How a call ends tells the user what happened: UNAVAILABLE before the answer means the target is
offline; ABORTED means the connection was closed or the user's access revoked; UNAVAILABLE later
means the broker lost the target's agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from bastion.registry.v1 import registry_service_pb2_grpc as registry_grpc
from mrzap import keys
from mrzap.channel import MAX_FRAME_DATA, Direction, FrameOpener, FrameSealer
from mrzap.errors import (
    InvalidArgument,
    MrzapError,
    NotFound,
    PermissionDenied,
    Unavailable,
    from_status,
)
from mrzap.handshake import Action, build_syn, verify_reject, verify_synack
from mrzap.verification import Reason, VerificationError

from ._client import ServiceClient
from ._flow import DEFAULT_WINDOW, ReceiveWindow, SendCredit

__all__ = [
    "ANSWER_TIMEOUT_S",
    "ChannelCall",
    "ChannelRequest",
    "ClientChannel",
    "Identity",
    "channel_error",
    "open_channel",
    "open_error",
    "reject_error",
    "resolve_target",
    "secure_channel",
]

#: How long zli waits for the broker's unary answers.
_CALL_TIMEOUT_S = 30.0
#: How long zli waits for the agent's SYN-ACK or Reject (the broker itself gives up after 30 s).
ANSWER_TIMEOUT_S = 40.0
#: Refresh the login when it has less than this left, before a SYN carries its tokens.
_REFRESH_MARGIN_S = 120.0


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a channel needs from the zli login: the bearer token, session key and PK token."""

    token: str = dataclasses.field(repr=False)
    """The service session's bearer token."""

    session_key: Ed25519PrivateKey = dataclasses.field(repr=False)
    """The session key the SYN is signed with."""

    pk_token: mrzap_pb2.PkToken = dataclasses.field(repr=False)
    """The PK token whose nonce commits to the session key."""

    @classmethod
    def from_login(cls, client: ServiceClient) -> Identity:
        """The identity of the saved login, refreshed first if it is about to expire."""
        if client.state.session_expires_at - time.time() < _REFRESH_MARGIN_S:
            client.refresh()
        state, key = client.state, client.state_dir.load_key()
        return cls(
            token=state.session_token,
            session_key=key,
            pk_token=mrzap_pb2.PkToken(
                id_token=state.id_token,
                upk=keys.public_key_bytes(key),
                rz=state.rz,
                refreshed_id_token=state.refreshed_id_token,
            ),
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that authenticates as this login."""
        return (("authorization", f"Bearer {self.token}"),)


@dataclasses.dataclass(frozen=True)
class ChannelRequest:
    """What the user asked for: which action, as whom, on which target."""

    target_id: str
    """The target's id."""

    target_name: str
    """The target as the user named it, for messages."""

    verb: mrzap_pb2.Verb.ValueType
    """The verb the grant must name."""

    target_user: str
    """The Unix user to act as."""

    action: Action
    """The SYN's action."""

    connection_id: str = ""
    """The connection to re-attach to; empty for a new one."""

    @property
    def who(self) -> str:
        """`user@target`, for messages."""
        return f"{self.target_user}@{self.target_name}"


def secure_channel(server: str, ca_file: str) -> grpc.aio.Channel:
    """A grpc.aio TLS channel to the service, trusting `ca_file` (or the system's roots)."""
    roots = None
    if ca_file:
        try:
            with open(ca_file, "rb") as file:
                roots = file.read()
        except OSError as error:
            raise InvalidArgument(f"cannot read the CA file {ca_file}: {error.strerror}") from None
    return grpc.aio.secure_channel(server, grpc.ssl_channel_credentials(root_certificates=roots))


async def resolve_target(channel: grpc.aio.Channel, identity: Identity, ref: str) -> str:
    """The id of the target named (or identified by) `ref`.

    A UUID is taken as the id without a lookup: one call fewer on the way to a shell. Names are
    looked up for every user: the service lists to each the targets the policies let them reach.
    """
    if _looks_like_uuid(ref):
        return ref
    stub = registry_grpc.RegistryServiceStub(channel)
    try:
        answer = await stub.ListTargets(
            registry_pb.ListTargetsRequest(name=ref, page_size=2),
            metadata=identity.metadata,
            timeout=_CALL_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as error:
        raise from_status(error.code(), error.details()) from None
    if len(answer.targets) == 1:
        return answer.targets[0].id
    if answer.targets:
        raise InvalidArgument(
            f"several targets you may reach are named {ref!r}: name one by id "
            "(`zli targets list --name` shows them)"
        )
    raise NotFound(
        f"no target named {ref!r} that you may reach: `zli targets list` shows those you may"
    )


async def open_channel(
    channel: grpc.aio.Channel,
    identity: Identity,
    request: ChannelRequest,
    *,
    window: int = DEFAULT_WINDOW,
) -> ClientChannel:
    """Get a grant, send the SYN and check the agent's answer; the open, encrypted channel."""
    stub = pb_grpc.BrokerServiceStub(channel)
    try:
        opened = await stub.OpenConnection(
            pb.OpenConnectionRequest(
                target_id=request.target_id,
                verb=request.verb,
                target_user=request.target_user,
                connection_id=request.connection_id,
            ),
            metadata=identity.metadata,
            timeout=_CALL_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as error:
        raise open_error(error.code(), error.details(), request) from None
    handshake = build_syn(
        session_key=identity.session_key,
        pk_token=identity.pk_token,
        signed_grant=opened.grant,
        channel_id=opened.channel_id,
        action=request.action,
    )
    call: Any = stub.Channel(metadata=identity.metadata)
    try:
        await call.write(
            pb.ChannelRequest(
                open=pb.ChannelOpen(channel_id=opened.channel_id, syn=handshake.signed_syn)
            )
        )
        answer = await asyncio.wait_for(call.read(), ANSWER_TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        raise open_error(error.code(), error.details(), request) from None
    except TimeoutError:
        call.cancel()
        raise Unavailable(f"target {request.target_name} did not answer in time") from None
    if answer is grpc.aio.EOF:
        raise Unavailable(
            f"the broker ended the channel before target {request.target_name} answered"
        )
    kind = answer.WhichOneof("frame")
    if kind == "reject":
        call.cancel()
        raise reject_error(verify_reject(handshake, answer.reject), request)
    if kind != "syn_ack":
        call.cancel()
        raise VerificationError(Reason.MALFORMED, f"the broker answered the SYN with {kind}")
    try:
        established = verify_synack(handshake, answer.syn_ack)
    except VerificationError:
        call.cancel()
        raise
    result = established.synack.result
    return ClientChannel(
        call,
        sealer=FrameSealer(established.keys, opened.channel_id, Direction.CLIENT_TO_AGENT),
        opener=FrameOpener(established.keys, opened.channel_id, Direction.AGENT_TO_CLIENT),
        connection_id=result.connection_id or opened.connection_id or opened.channel_id,
        replay=result.replay,
        request=request,
        window=window,
    )


class ChannelCall(Protocol):
    """The client's side of a `BrokerService.Channel` call (a grpc.aio stream-stream call)."""

    def read(self) -> Awaitable[object]:
        """The next ChannelResponse, or grpc.aio.EOF."""

    def write(self, request: pb.ChannelRequest) -> Awaitable[None]:
        """Send one request."""

    def done_writing(self) -> Awaitable[None]:
        """Half-close: no more requests."""

    def cancel(self) -> bool:
        """Leave the call."""


class ClientChannel:
    """An open channel: sealed messages out within the agent's credit, opened messages in.

    Any task may send (a lock keeps the sequence numbers in send order and lets at most one
    write be in flight); one task receives.
    """

    def __init__(
        self,
        call: ChannelCall,
        *,
        sealer: FrameSealer,
        opener: FrameOpener,
        connection_id: str,
        replay: bytes,
        request: ChannelRequest,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self._call = call
        self._sealer = sealer
        self._opener = opener
        self.connection_id = connection_id
        """The connection this channel belongs to (what `zli connections attach` takes)."""
        self.replay = replay
        """Recent output of the shell, on re-attach; shown before anything new."""
        self.request = request
        """What was asked for."""
        self.credit = SendCredit(window)
        """Bytes of input the agent accepts now."""
        self._window = ReceiveWindow(window)
        self._lock = asyncio.Lock()
        self._writing_done = False

    async def send(self, message: mrzap_pb2.ChannelMessage) -> None:
        """Seal and send one message; dropped once `finish_writing` was called."""
        async with self._lock:
            if self._writing_done:
                return  # the process ended: nothing the user still types matters to it
            frame = self._sealer.seal(message)
            try:
                await self._call.write(pb.ChannelRequest(channel_frame=frame))
            except grpc.aio.AioRpcError as error:
                raise channel_error(error.code(), error.details(), self.request) from None
            except asyncio.InvalidStateError:
                return  # the call is over; reading it says how

    async def finish_writing(self) -> None:
        """Half-close the call: nothing more will be sent.

        Called when the process exited, before reading the call to its end: a client write still
        in flight when the broker ends the call makes grpcio end it with INTERNAL and lose the
        messages before it (the exit status among them). Holding the send lock means no write
        is in flight; cancelling a task inside a write would cancel the whole call instead.
        """
        async with self._lock:
            if self._writing_done:
                return
            self._writing_done = True
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self._call.done_writing()

    async def send_input(self, data: bytes) -> None:
        """Send stdin in as few frames as the credit allows; waits while there is no credit."""
        view = memoryview(data)
        while view:
            count = min(await self.credit.wait(), MAX_FRAME_DATA, len(view))
            self.credit.spend(count)
            await self.send(mrzap_pb2.ChannelMessage(stdin=bytes(view[:count])))
            view = view[count:]

    async def resize(self, rows: int, cols: int) -> None:
        """Tell the shell its terminal's new size."""
        await self.send(mrzap_pb2.ChannelMessage(resize=mrzap_pb2.Resize(rows=rows, cols=cols)))

    async def end_input(self) -> None:
        """No more stdin will come (a command sees end of file)."""
        await self.send(mrzap_pb2.ChannelMessage(end_of_input=mrzap_pb2.EndOfInput()))

    async def close(self, reason: str) -> None:
        """End the connection itself (a shell ends too), not only this channel."""
        await self.send(mrzap_pb2.ChannelMessage(close=mrzap_pb2.Close(reason=reason)))
        await self.finish_writing()

    def detach(self) -> None:
        """Leave the channel; a shell keeps running on the target for re-attachment."""
        self._call.cancel()

    async def receive(self) -> mrzap_pb2.ChannelMessage | None:
        """The next message from the agent; None once the channel ended in an orderly way.

        Window updates are handled here. Output counts against the agent's credit until it is
        handed to `consumed`. An `error` from the agent raises.
        """
        while True:
            try:
                response = await self._call.read()
            except grpc.aio.AioRpcError as error:
                raise channel_error(error.code(), error.details(), self.request) from None
            if not isinstance(response, pb.ChannelResponse):
                return None  # grpc.aio.EOF: the agent closed the channel
            if response.WhichOneof("frame") != "channel_frame":
                raise VerificationError(Reason.MALFORMED, "a second handshake answer on a channel")
            message = self._opener.open(response.channel_frame)
            kind = message.WhichOneof("message")
            if kind == "window_update":
                self.credit.grant(message.window_update.bytes)
                continue
            if kind in ("stdout", "stderr"):
                try:
                    self._window.received(len(getattr(message, kind)))
                except ValueError as error:
                    raise VerificationError(Reason.TOO_LARGE, str(error)) from None
            elif kind == "error":
                raise PermissionDenied(
                    f"target {self.request.target_name} ended the channel: "
                    f"{Reason.from_wire(message.error.code).value}: {message.error.message}"
                )
            return message

    async def consumed(self, count: int) -> None:
        """`count` bytes of output were written out: grant the agent more credit when due."""
        granted = self._window.consumed(count)
        if granted:
            await self.send(
                mrzap_pb2.ChannelMessage(window_update=mrzap_pb2.WindowUpdate(bytes=granted))
            )


def open_error(code: grpc.StatusCode, details: str | None, request: ChannelRequest) -> MrzapError:
    """A clear error for a call that failed before the agent answered."""
    details = details or ""
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"access to {request.who} denied: {details}")
    if code == grpc.StatusCode.UNAVAILABLE and ("offline" in details or "agent" in details):
        return Unavailable(f"target {request.target_name} is offline")
    return from_status(code, details)


def channel_error(
    code: grpc.StatusCode, details: str | None, request: ChannelRequest
) -> MrzapError:
    """A clear error for a channel that ended badly after the agent accepted it."""
    if code == grpc.StatusCode.ABORTED:
        return from_status(code, "the connection was closed or your access was revoked")
    if code == grpc.StatusCode.UNAVAILABLE:
        return from_status(
            code, f"lost the connection to target {request.target_name}: {details or 'unavailable'}"
        )
    return from_status(code, details)


def reject_error(reject: mrzap_pb2.Reject, request: ChannelRequest) -> PermissionDenied:
    """The agent's signed refusal, with its reason code."""
    reason = Reason.from_wire(reject.code)
    return PermissionDenied(
        f"target {request.target_name} refused {request.who}: {reason.value}: {reject.message}"
    )


def _looks_like_uuid(text: str) -> bool:
    parts = text.split("-")
    return [len(part) for part in parts] == [8, 4, 4, 4, 12] and all(
        c in "0123456789abcdefABCDEF" for c in text.replace("-", "")
    )
