"""The test client's side of a connection, over a user's own zli session.

`open_channel` does what an honest client does: BrokerService.OpenConnection (a real policy
decision and grant) with the user's bearer token, a SYN signed with the user's session key and PK
token (mrzap.handshake.build_syn), BrokerService.Channel, and the SYN-ACK checked with
verify_synack. The result seals what the test sends and opens what the agent answers, so a test
can hold a channel open, type into it, read it, or let it go, while zli runs beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.channel import Direction, FrameOpener, FrameSealer
from mrzap.handshake import (
    Action,
    EstablishedHandshake,
    build_syn,
    verify_reject,
    verify_synack,
)
from zli._state import StateDir

from .conftest import Cluster


def metadata(home: Path) -> tuple[tuple[str, str], ...]:
    """The call metadata of the user whose zli home is `home` (their bearer token)."""
    return (("authorization", f"Bearer {StateDir(home).load().session_token}"),)


@contextlib.asynccontextmanager
async def broker(cluster: Cluster) -> AsyncIterator[pb_grpc.BrokerServiceAsyncStub]:
    """A BrokerService stub over TLS to the cluster, closed when the block ends."""
    credentials = grpc.ssl_channel_credentials(cluster.ca_file.read_bytes())
    async with grpc.aio.secure_channel(cluster.server, credentials) as channel:
        yield pb_grpc.BrokerServiceStub(channel)


@dataclasses.dataclass
class ClientChannel:
    """An established channel: send, receive, close."""

    call: Any
    """The BrokerService.Channel call (a grpc stream)."""
    opened: pb.OpenConnectionResponse
    established: EstablishedHandshake
    sealer: FrameSealer
    opener: FrameOpener

    @property
    def connection_id(self) -> str:
        """The connection's id as the broker named it."""
        return self.opened.connection_id

    async def send(self, message: mrzap_pb2.ChannelMessage) -> None:
        """Seal `message` for the agent and send it."""
        await self.call.write(pb.ChannelRequest(channel_frame=self.sealer.seal(message)))

    async def receive(self) -> mrzap_pb2.ChannelMessage | None:
        """The agent's next message, opened; None once the call has ended cleanly."""
        response = await self.call.read()
        if response is grpc.aio.EOF:
            return None
        message: mrzap_pb2.ChannelMessage = self.opener.open(response.channel_frame)
        return message

    async def until_exit(self, *, with_stderr: bool = False) -> tuple[bytes, int]:
        """Read to the agent's exit message; (the output, stderr interleaved if asked; the exit
        code). The channel ending without one fails the test."""
        out = bytearray()
        while (message := await self.receive()) is not None:
            if message.HasField("exit"):
                return bytes(out), message.exit.code
            out += message.stdout + (message.stderr if with_stderr else b"")
        raise AssertionError(f"no exit; output {bytes(out)!r}")

    def close(self) -> None:
        """The client goes away (a shell keeps running on the target)."""
        self.call.cancel()


def pk_token(home: Path) -> mrzap_pb2.PkToken:
    """The PK token of the user whose zli home is `home` (ID token bound to their session key)."""
    state_dir = StateDir(home)
    state = state_dir.load()
    return mrzap_pb2.PkToken(
        id_token=state.id_token,
        upk=keys.public_key_bytes(state_dir.load_key()),
        rz=state.rz,
        refreshed_id_token=state.refreshed_id_token,
    )


async def open_channel(
    stub: pb_grpc.BrokerServiceAsyncStub,
    home: Path,
    target_id: str,
    action: Action,
    *,
    target_user: str,
    timeout_s: float,
    call_timeout_s: float,
) -> ClientChannel:
    """Open `action` on `target_id` as the user whose zli home is `home`, through the broker;
    the agent refusing it fails the test (see `start_channel`)."""
    started = await start_channel(
        stub,
        home,
        target_id,
        action,
        target_user=target_user,
        timeout_s=timeout_s,
        call_timeout_s=call_timeout_s,
    )
    assert isinstance(started, ClientChannel), started
    return started


async def start_channel(
    stub: pb_grpc.BrokerServiceAsyncStub,
    home: Path,
    target_id: str,
    action: Action,
    *,
    target_user: str,
    timeout_s: float,
    call_timeout_s: float,
) -> ClientChannel | mrzap_pb2.Reject:
    """Open `action` on `target_id` as the user whose zli home is `home`, through the broker:
    the established channel, or the agent's Reject (its signature checked).

    The verb follows the action (exec for Exec, shell otherwise); a ShellAttach asks for its
    connection. Each step waits at most `timeout_s`; the Channel call lives `call_timeout_s`.
    """
    call_metadata = metadata(home)
    attach = action.connection_id if isinstance(action, mrzap_pb2.ShellAttach) else ""
    verb = mrzap_pb2.VERB_EXEC if isinstance(action, mrzap_pb2.Exec) else mrzap_pb2.VERB_SHELL
    opened = await stub.OpenConnection(
        pb.OpenConnectionRequest(
            target_id=target_id, verb=verb, target_user=target_user, connection_id=attach
        ),
        metadata=call_metadata,
        timeout=timeout_s,
    )
    handshake = build_syn(
        session_key=StateDir(home).load_key(),
        pk_token=pk_token(home),
        signed_grant=opened.grant,
        channel_id=opened.channel_id,
        action=action,
    )
    call: Any = stub.Channel(metadata=call_metadata, timeout=call_timeout_s)
    await call.write(
        pb.ChannelRequest(
            open=pb.ChannelOpen(channel_id=opened.channel_id, syn=handshake.signed_syn)
        )
    )
    answer = await asyncio.wait_for(call.read(), timeout_s)
    if answer.WhichOneof("frame") == "reject":
        return verify_reject(handshake, answer.reject)
    assert answer.WhichOneof("frame") == "syn_ack", answer
    established = verify_synack(handshake, answer.syn_ack)
    return ClientChannel(
        call,
        opened,
        established,
        FrameSealer(established.keys, opened.channel_id, Direction.CLIENT_TO_AGENT),
        FrameOpener(established.keys, opened.channel_id, Direction.AGENT_TO_CLIENT),
    )
