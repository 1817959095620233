"""The agent's control-stream reader (agent/_control.py _Reader): channel traffic is handled as it
is read, everything else reaches the control loop in order, and how the stream ended is told."""

from __future__ import annotations

import asyncio

import grpc.aio
import pytest

from agent._control import _Reader
from bastion.agent.v1 import agent_service_pb2 as pb

FRAME = pb.ControlResponse(channel_frame=pb.ChannelFrame(channel_id="c-1"))
KEEPALIVE = pb.ControlResponse(keepalive=pb.Keepalive())


class FakeCall:
    """A stream call whose reads return the messages put in, then EOF or an error."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[object] = asyncio.Queue()

    async def read(self) -> object:
        item = await self.incoming.get()
        if isinstance(item, Exception):
            raise item
        return item


@pytest.mark.asyncio
async def test_channel_messages_go_to_the_shortcut_and_the_rest_to_next_in_order() -> None:
    call, stopping = FakeCall(), asyncio.get_running_loop().create_future()
    reader = _Reader(call, stopping)
    handled: list[pb.ControlResponse] = []

    def shortcut(message: pb.ControlResponse) -> bool:
        if message.WhichOneof("frame") != "channel_frame":
            return False
        handled.append(message)
        return True

    reader.shortcut = shortcut
    before = reader.heard_at
    for item in (FRAME, FRAME, KEEPALIVE, FRAME, grpc.aio.EOF):
        call.incoming.put_nowait(item)
    assert await reader.next(5.0) == KEEPALIVE
    with pytest.raises(EOFError):
        await reader.next(5.0)
    assert handled == [FRAME, FRAME, FRAME]
    assert reader.heard_at >= before  # channel traffic counts as hearing from the broker
    reader.cancel()


@pytest.mark.asyncio
async def test_without_a_shortcut_everything_reaches_next() -> None:
    call, stopping = FakeCall(), asyncio.get_running_loop().create_future()
    reader = _Reader(call, stopping)
    call.incoming.put_nowait(FRAME)
    assert await reader.next(5.0) == FRAME
    reader.cancel()


@pytest.mark.asyncio
async def test_a_timeout_or_a_stop_returns_none_and_loses_nothing() -> None:
    call, stopping = FakeCall(), asyncio.get_running_loop().create_future()
    reader = _Reader(call, stopping)
    assert await reader.next(0.01) is None
    call.incoming.put_nowait(KEEPALIVE)
    assert await reader.next(5.0) == KEEPALIVE
    stopping.set_result(None)
    assert await reader.next(5.0) is None
    reader.cancel()


@pytest.mark.asyncio
async def test_a_broken_call_is_raised_by_next() -> None:
    call, stopping = FakeCall(), asyncio.get_running_loop().create_future()
    reader = _Reader(call, stopping)
    call.incoming.put_nowait(RuntimeError("broken"))
    with pytest.raises(RuntimeError, match="broken"):
        await reader.next(5.0)
    reader.cancel()


@pytest.mark.asyncio
async def test_drain_reads_to_the_end_of_the_stream() -> None:
    call, stopping = FakeCall(), asyncio.get_running_loop().create_future()
    reader = _Reader(call, stopping)
    for item in (KEEPALIVE, FRAME, grpc.aio.EOF):
        call.incoming.put_nowait(item)
    await asyncio.wait_for(reader.drain(), 5.0)
    assert call.incoming.empty()
