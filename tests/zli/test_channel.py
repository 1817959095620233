"""zli's channel client against a scripted broker and agent in this process.

The fake here is the service side only (a grpc.aio BrokerService on loopback that also plays the
agent with mrzap.handshake and mrzap.channel): real agents and brokers are in
tests/e2e/test_zli_connect.py. The fake can misbehave as a compromised broker would — forge the
agent's answer, flip a ciphertext byte, overrun the flow-control credit — and zli must refuse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.channel import (
    MAX_FRAME_DATA,
    ChannelKeys,
    Direction,
    FrameOpener,
    FrameSealer,
    derive_channel_keys,
    new_key_exchange,
)
from mrzap.envelope import Domain, parse_signed, sign, signed_hash
from mrzap.errors import Aborted, PermissionDenied, Unavailable
from mrzap.verification import Reason, VerificationError
from zli._channel import ChannelRequest, ClientChannel, Identity, open_channel
from zli._flow import DEFAULT_WINDOW
from zli._session import Streams, run_session

TARGET_ID = "0f6e4a8e-0000-4000-8000-000000000001"
CHANNEL_ID = "c0ffee00-0000-4000-8000-000000000002"


@dataclasses.dataclass
class Script:
    """How the fake service behaves, and what it saw."""

    answer: str = "synack"
    """synack, reject, forged-synack, forged-reject, offline or denied."""
    after: str = "echo"
    """What the agent does once open: echo (stdin back as stdout), flip, abort or overrun."""
    stdin_frames: int = 0
    stdin_bytes: int = 0
    credit_breached: bool = False
    window_updates: int = 0


class FakeService(pb_grpc.BrokerServiceServicer):
    """OpenConnection with a real signed grant; Channel played by a scripted agent."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.agent_key = Ed25519PrivateKey.generate()
        service_key = Ed25519PrivateKey.generate()
        grant = mrzap_pb2.Grant(
            grant_id="g-1",
            target_id=TARGET_ID,
            target_public_key=keys.public_key_bytes(self.agent_key),
            verb=mrzap_pb2.VERB_EXEC,
            target_user="alice",
        )
        self.grant = sign(service_key, Domain.GRANT, grant.SerializeToString(), "k1")

    async def OpenConnection(
        self, request: pb.OpenConnectionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OpenConnectionResponse:
        if self.script.answer == "denied":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no policy allows alice")
        return pb.OpenConnectionResponse(
            channel_id=CHANNEL_ID,
            grant=self.grant,
            agent_public_key=keys.public_key_bytes(self.agent_key),
        )

    async def Channel(
        self,
        requests: AsyncIterator[pb.ChannelRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ChannelResponse]:
        script = self.script
        first = await anext(requests)
        raw_syn = first.open.syn
        syn = mrzap_pb2.Syn.FromString(parse_signed(raw_syn).payload)
        if script.answer == "offline":
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"target {TARGET_ID} is offline: its agent is gone"
            )
        signer = self.agent_key
        if script.answer.startswith("forged"):
            signer = Ed25519PrivateKey.generate()  # the broker's own key, not the agent's
        if script.answer.endswith("reject"):
            reject = mrzap_pb2.Reject(
                syn_hash=signed_hash(raw_syn),
                code=Reason.ACTION_TARGET_USER_NOT_ALLOWED.to_wire(),
                message="this target does not allow user 'alice'",
            )
            yield pb.ChannelResponse(
                reject=sign(signer, Domain.REJECT, reject.SerializeToString()).SerializeToString()
            )
            return
        kx_private, kx_public = new_key_exchange()
        synack = mrzap_pb2.SynAck(
            syn_hash=signed_hash(raw_syn),
            agent_nonce=secrets.token_bytes(32),
            timestamp_ms=round(time.time() * 1000),
            agent_kx=kx_public,
            result=mrzap_pb2.ActionResult(connection_id=CHANNEL_ID, replay=b"earlier\r\n"),
        )
        raw_ack = sign(signer, Domain.SYNACK, synack.SerializeToString()).SerializeToString()
        channel_keys = derive_channel_keys(kx_private, syn.client_kx, raw_syn, raw_ack)
        yield pb.ChannelResponse(syn_ack=raw_ack)
        sealer = FrameSealer(channel_keys, CHANNEL_ID, Direction.AGENT_TO_CLIENT)
        opener = FrameOpener(channel_keys, CHANNEL_ID, Direction.CLIENT_TO_AGENT)

        def out(message: mrzap_pb2.ChannelMessage) -> pb.ChannelResponse:
            return pb.ChannelResponse(channel_frame=sealer.seal(message))

        if script.after == "flip":
            frame = sealer.seal(mrzap_pb2.ChannelMessage(stdout=b"evil"))
            frame.ciphertext = bytes([frame.ciphertext[0] ^ 1]) + frame.ciphertext[1:]
            yield pb.ChannelResponse(channel_frame=frame)
            await asyncio.sleep(30)  # zli must end the channel itself
        if script.after == "abort":
            await context.abort(grpc.StatusCode.ABORTED, "grant g-1 revoked")
        if script.after == "overrun":
            for _ in range(DEFAULT_WINDOW // MAX_FRAME_DATA + 1):  # one frame past the credit
                yield out(mrzap_pb2.ChannelMessage(stdout=bytes(MAX_FRAME_DATA)))
            await asyncio.sleep(30)
        # echo: stdin back as stdout, exit 3 after end of input. Input credit is granted back as
        # the real agent does, half a window at a time, so a client past its credit shows.
        inbound_credit, consumed = DEFAULT_WINDOW, 0
        async for request in requests:
            message = opener.open(request.channel_frame)
            kind = message.WhichOneof("message")
            if kind == "window_update":
                script.window_updates += 1
            elif kind == "stdin":
                size = len(message.stdin)
                script.stdin_frames += 1
                script.stdin_bytes += size
                inbound_credit -= size
                script.credit_breached |= inbound_credit < 0
                consumed += size
                if consumed >= DEFAULT_WINDOW // 2:
                    granted, consumed = consumed, 0
                    inbound_credit += granted
                    update = mrzap_pb2.WindowUpdate(bytes=granted)
                    yield out(mrzap_pb2.ChannelMessage(window_update=update))
                yield out(mrzap_pb2.ChannelMessage(stdout=message.stdin))
            elif kind == "end_of_input":
                yield out(mrzap_pb2.ChannelMessage(stderr=b"bye\n"))
                yield out(mrzap_pb2.ChannelMessage(exit=mrzap_pb2.Exit(code=3)))
                return

    # Not used by zli's channel; abstract in the generated base class.
    async def ListConnections(
        self, request: pb.ListConnectionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListConnectionsResponse:
        raise NotImplementedError

    async def CloseConnection(
        self, request: pb.CloseConnectionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CloseConnectionResponse:
        raise NotImplementedError

    async def LockUser(
        self, request: pb.LockUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LockUserResponse:
        raise NotImplementedError

    async def UnlockUser(
        self, request: pb.UnlockUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UnlockUserResponse:
        raise NotImplementedError


@pytest_asyncio.fixture
async def service() -> AsyncIterator[tuple[FakeService, grpc.aio.Channel]]:
    fake = FakeService(Script())
    server = grpc.aio.server()
    pb_grpc.add_BrokerServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield fake, channel
    finally:
        await server.stop(0)


def identity() -> Identity:
    key = Ed25519PrivateKey.generate()
    return Identity("token", key, mrzap_pb2.PkToken(upk=keys.public_key_bytes(key)))


def request() -> ChannelRequest:
    action = mrzap_pb2.Exec(target_user="alice", command="cat")
    return ChannelRequest(TARGET_ID, "web-1", mrzap_pb2.VERB_EXEC, "alice", action)


async def opened(channel: grpc.aio.Channel) -> ClientChannel:
    return await open_channel(channel, identity(), request())


@pytest.mark.asyncio
async def test_an_honest_agent_opens_a_channel(service: tuple[FakeService, Any]) -> None:
    _, channel = service
    client = await opened(channel)
    assert (client.connection_id, client.replay) == (CHANNEL_ID, b"earlier\r\n")
    client.detach()


@pytest.mark.asyncio
async def test_a_synack_not_signed_by_the_agent_is_refused(
    service: tuple[FakeService, Any],
) -> None:
    fake, channel = service
    fake.script.answer = "forged-synack"
    with pytest.raises(VerificationError) as refused:
        await opened(channel)
    assert refused.value.reason is Reason.BAD_SIGNATURE


@pytest.mark.asyncio
async def test_a_reject_not_signed_by_the_agent_is_not_believed(
    service: tuple[FakeService, Any],
) -> None:
    fake, channel = service
    fake.script.answer = "forged-reject"
    with pytest.raises(VerificationError) as refused:
        await opened(channel)
    assert refused.value.reason is Reason.BAD_SIGNATURE
    assert "does not allow" not in refused.value.message


@pytest.mark.asyncio
async def test_the_agents_reject_gives_its_reason_code(service: tuple[FakeService, Any]) -> None:
    fake, channel = service
    fake.script.answer = "reject"
    with pytest.raises(PermissionDenied, match="ACTION_TARGET_USER_NOT_ALLOWED: this target"):
        await opened(channel)


@pytest.mark.asyncio
async def test_offline_and_denied(service: tuple[FakeService, Any]) -> None:
    fake, channel = service
    fake.script.answer = "offline"
    with pytest.raises(Unavailable, match=r"^target web-1 is offline$"):
        await opened(channel)
    fake.script.answer = "denied"
    with pytest.raises(PermissionDenied, match=r"^access to alice@web-1 denied: no policy allows"):
        await opened(channel)


@pytest.mark.asyncio
async def test_a_flipped_ciphertext_byte_ends_the_channel(service: tuple[FakeService, Any]) -> None:
    fake, channel = service
    fake.script.after = "flip"
    client = await opened(channel)
    with pytest.raises(VerificationError) as refused:
        await client.receive()
    assert refused.value.reason is Reason.FRAME_AUTH_FAILED
    client.detach()


@pytest.mark.asyncio
async def test_output_past_the_credit_ends_the_channel(service: tuple[FakeService, Any]) -> None:
    fake, channel = service
    fake.script.after = "overrun"
    client = await opened(channel)
    for _ in range(DEFAULT_WINDOW // MAX_FRAME_DATA):
        await client.receive()  # never consumed: no credit is granted back
    with pytest.raises(VerificationError) as refused:
        await client.receive()
    assert refused.value.reason is Reason.TOO_LARGE
    client.detach()


@pytest.mark.asyncio
async def test_revocation_reads_as_closed_or_revoked(service: tuple[FakeService, Any]) -> None:
    fake, channel = service
    fake.script.after = "abort"
    client = await opened(channel)
    with pytest.raises(Aborted, match="the connection was closed or your access was revoked"):
        await client.receive()


@pytest.mark.asyncio
async def test_a_session_respects_credit_both_ways_and_returns_the_exit_status(
    service: tuple[FakeService, Any],
) -> None:
    fake, channel = service
    data = os.urandom(3 * DEFAULT_WINDOW + 123)
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    collected = bytearray()

    def writer() -> None:
        for start in range(0, len(data), 512):
            os.write(stdin_w, data[start : start + 512])
        os.close(stdin_w)

    def reader() -> None:
        while chunk := os.read(out_r, 65536):
            collected.extend(chunk)

    try:
        client = await opened(channel)
        writing = asyncio.to_thread(writer)
        reading = asyncio.to_thread(reader)
        ended, *_ = await asyncio.gather(
            _session_then_close(client, stdin_r, out_w, err_w), writing, reading
        )
        assert ended == 3
        assert bytes(collected) == b"earlier\r\n" + data
        assert os.read(err_r, 100) == b"bye\n"
        assert not fake.script.credit_breached
        assert fake.script.stdin_bytes == len(data)
        assert fake.script.window_updates >= 1  # output credit was granted back
    finally:
        for fd in (stdin_r, out_r, err_r, err_w):
            os.close(fd)


async def _session_then_close(client: ClientChannel, stdin: int, out: int, err: int) -> int:
    try:
        ended = await run_session(client, Streams(stdin, out, err))
    finally:
        os.close(out)  # the reader thread sees end of file
    return ended.status


@pytest.mark.asyncio
async def test_tilde_dot_detaches_after_sending_what_came_before(
    service: tuple[FakeService, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, channel = service
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        client = await opened(channel)
        sent: list[mrzap_pb2.ChannelMessage] = []
        send = client.send

        async def recording(message: mrzap_pb2.ChannelMessage) -> None:
            sent.append(message)
            await send(message)

        monkeypatch.setattr(client, "send", recording)
        os.write(stdin_w, b"ls\r~?~.never sent")
        ended = await run_session(client, Streams(stdin_r, out_w, out_w), escapes=True)
        assert (ended.status, ended.detached) == (0, True)
        assert [m.stdin for m in sent if m.HasField("stdin")] == [b"ls\r"]
        shown = os.read(out_r, 65536)
        assert shown.startswith(b"earlier\r\n")  # the replay comes first
        assert b"~.  detach" in shown  # then the help that ~? asked for
    finally:
        for fd in (stdin_r, stdin_w, out_r, out_w):
            os.close(fd)


@pytest.mark.asyncio
async def test_small_writes_waiting_on_stdin_go_out_as_one_frame(
    service: tuple[FakeService, Any],
) -> None:
    fake, channel = service
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        client = await opened(channel)
        for _ in range(100):  # 100 small writes, all waiting before zli reads
            os.write(stdin_w, b"k" * 512)
        os.close(stdin_w)
        stdin_w = -1
        ended = await run_session(client, Streams(stdin_r, out_w, out_w))
        assert ended.status == 3
        assert (fake.script.stdin_frames, fake.script.stdin_bytes) == (1, 100 * 512)
    finally:
        for fd in (stdin_r, stdin_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)


class RecordingCall:
    """A Channel call that keeps what zli writes; nothing is ever read from it."""

    def __init__(self) -> None:
        self.written: list[pb.ChannelRequest] = []

    async def read(self) -> object:
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    async def write(self, request: pb.ChannelRequest) -> None:
        self.written.append(request)

    async def done_writing(self) -> None:
        pass

    def cancel(self) -> bool:
        return True


@pytest.mark.asyncio
async def test_stdin_stops_at_the_agents_credit_until_it_grants_more() -> None:
    channel_keys = ChannelKeys(os.urandom(32), os.urandom(32))
    call = RecordingCall()
    client = ClientChannel(
        call,
        sealer=FrameSealer(channel_keys, CHANNEL_ID, Direction.CLIENT_TO_AGENT),
        opener=FrameOpener(channel_keys, CHANNEL_ID, Direction.AGENT_TO_CLIENT),
        connection_id=CHANNEL_ID,
        replay=b"",
        request=request(),
    )
    agent = FrameOpener(channel_keys, CHANNEL_ID, Direction.CLIENT_TO_AGENT)

    def stdin_sent() -> int:
        opened = [agent.open(r.channel_frame) for r in call.written[len(seen) :]]
        seen.extend(opened)
        return sum(len(m.stdin) for m in seen)

    seen: list[mrzap_pb2.ChannelMessage] = []
    sending = asyncio.ensure_future(client.send_input(bytes(DEFAULT_WINDOW + 1000)))
    for _ in range(50):  # every write completes at once: let the task run until it waits
        await asyncio.sleep(0)
    assert not sending.done()
    assert stdin_sent() == DEFAULT_WINDOW  # exactly the credit, then it waits
    client.credit.grant(600)  # the agent's window update
    for _ in range(50):
        await asyncio.sleep(0)
    assert stdin_sent() == DEFAULT_WINDOW + 600
    client.credit.grant(400)
    await sending
    assert stdin_sent() == DEFAULT_WINDOW + 1000
    assert all(len(m.stdin) <= MAX_FRAME_DATA for m in seen)
