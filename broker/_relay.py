"""The broker's channel relay: client Channel streams ↔ agents' control streams (PROTOCOL.md §5-§7).

A client's `Channel` call and its agent's control stream meet here, keyed by channel id. The relay
moves opaque bytes only: the SYN, the agent's signed answer and AEAD frames go through unchanged
(the SYN-ACK's `syn_hash` and the frames' AAD would catch any change), so the broker never sees
plaintext and cannot alter it.

Bounds, since neither peer is trusted with the broker's memory:
- agent → client: each channel's queue holds at most `max_queued_bytes`. The end-to-end credit of
  §6 (256 KiB per direction, granted inside the encrypted frames) keeps an honest agent far below
  it; an agent past it has broken flow control, and the channel ends rather than stalling the
  control stream that every other channel of the agent shares.
- client → agent: the client's frames wait in the agent stream's outbox until the control stream
  has written them; while a channel has `max_queued_bytes` waiting, the broker stops reading the
  client's call, so HTTP/2 flow control pushes back on the client.
Frames are relayed one for one; coalescing small reads into 16-64 KiB frames is the endpoints'
job (the agent's PTY reader and zli's stdin reader), because only they see the plaintext.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import Iterator

from bastion.agent.v1 import agent_service_pb2 as agent_pb
from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.errors import AlreadyExists, MrzapError, ResourceExhausted, Unavailable

from ._connected import AgentStream, ConnectedAgents

__all__ = ["DEFAULT_MAX_QUEUED_BYTES", "ChannelEnd", "ChannelRelay", "RelayedChannel"]

#: Per channel and direction (BrokerConfig.max_channel_queue_bytes sets it for a broker).
DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024
#: Ids of channels the client left, remembered so the agent's messages that crossed the broker's
#: ChannelClose are dropped quietly rather than taken for a protocol violation.
_REMEMBERED_GONE = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelEnd:
    """The channel is over on the agent's side; `error` says how the client's call ends."""

    error: MrzapError | None
    """None when the agent closed the channel in an orderly way (the call ends with OK)."""

    detached: bool = False
    """The agent ended the channel but said its shell runs on (ChannelClose.detached)."""


class RelayedChannel:
    """One client's channel as the relay holds it."""

    __slots__ = (
        "_drained",
        "_queue",
        "answered",
        "channel_id",
        "ended",
        "queued_to_agent",
        "queued_to_client",
        "stream",
        "target_id",
    )

    def __init__(self, channel_id: str, stream: AgentStream) -> None:
        self.channel_id = channel_id
        """The channel id of the SYN."""
        self.stream = stream
        """The agent's control stream the channel was opened on; it dies with that stream."""
        self.target_id = stream.target_id
        """The target whose agent holds the other end."""
        self.answered = False
        """Whether the agent's SYN-ACK has come; frames before it break the protocol."""
        self.ended = False
        """Whether the channel is over; nothing more is relayed."""
        self.queued_to_client = 0
        """Bytes of frames waiting for the client's call."""
        self.queued_to_agent = 0
        """Bytes of frames waiting in the agent stream's outbox."""
        self._queue: asyncio.Queue[pb.ChannelResponse | ChannelEnd] = asyncio.Queue()
        self._drained = asyncio.Event()
        self._drained.set()

    async def next(self) -> pb.ChannelResponse | ChannelEnd:
        """The next message for the client, or how the channel ended."""
        item = await self._queue.get()
        if isinstance(item, pb.ChannelResponse) and item.HasField("channel_frame"):
            self.queued_to_client -= len(item.channel_frame.ciphertext)
        return item

    def _deliver(self, item: pb.ChannelResponse | ChannelEnd) -> None:
        if not self.ended:
            self._queue.put_nowait(item)

    def _end(self, error: MrzapError | None, *, detached: bool = False) -> None:
        if not self.ended:
            self._queue.put_nowait(ChannelEnd(error, detached))
            self.ended = True
            self._drained.set()  # nobody may wait for an outbox that will never drain


class ChannelRelay:
    """Every channel relayed by this broker, by channel id."""

    def __init__(
        self, agents: ConnectedAgents, max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    ) -> None:
        self._agents = agents
        self._max_queued = max_queued_bytes
        self._channels: dict[str, RelayedChannel] = {}
        self._gone: OrderedDict[str, AgentStream] = OrderedDict()

    def __len__(self) -> int:
        return len(self._channels)

    def __iter__(self) -> Iterator[RelayedChannel]:
        return iter(list(self._channels.values()))

    # --- the client's side -------------------------------------------------------------------

    def open(self, channel_id: str, target_id: str, syn: bytes) -> RelayedChannel:
        """Register the channel and hand the SYN to the target's agent.

        Raises Unavailable when the agent is not connected to this broker, AlreadyExists when the
        channel id is in use.
        """
        stream = self._stream(target_id)
        if channel_id in self._channels:
            raise AlreadyExists(f"channel {channel_id} is already open")
        channel = RelayedChannel(channel_id, stream)
        self._channels[channel_id] = channel
        stream.send(
            agent_pb.ControlResponse(
                channel_open=agent_pb.ChannelOpen(channel_id=channel_id, syn=syn)
            )
        )
        return channel

    async def to_agent(self, channel: RelayedChannel, frame: mrzap_pb2.Frame) -> None:
        """Relay a client frame; waits while too much of this channel's traffic is queued."""
        while channel.queued_to_agent >= self._max_queued and not channel.ended:
            channel._drained.clear()
            await channel._drained.wait()
        if channel.ended:
            return
        stream = channel.stream
        if stream.closed:
            self._finish(channel, Unavailable("the broker lost the target's agent"))
            return
        channel.queued_to_agent += len(frame.ciphertext)
        stream.send(
            agent_pb.ControlResponse(
                channel_frame=agent_pb.ChannelFrame(channel_id=channel.channel_id, frame=frame)
            )
        )

    def client_gone(self, channel: RelayedChannel, reason: str) -> None:
        """The client's call ended: forget the channel and tell the agent, unless it ended it."""
        if self._channels.get(channel.channel_id) is not channel:
            return
        del self._channels[channel.channel_id]
        self._gone[channel.channel_id] = channel.stream
        if len(self._gone) > _REMEMBERED_GONE:
            self._gone.popitem(last=False)
        was_over = channel.ended
        channel._end(None)
        if not was_over:
            channel.stream.send(
                agent_pb.ControlResponse(
                    channel_close=agent_pb.ChannelClose(
                        channel_id=channel.channel_id, reason=reason
                    )
                )
            )

    def refuse_client(self, channel: RelayedChannel, error: MrzapError) -> None:
        """The client broke the channel's rules: its call ends with `error`, the agent is told."""
        self._finish(channel, error)

    # --- the agent's side --------------------------------------------------------------------

    def sent_to_agent(self, message: agent_pb.ControlResponse) -> None:
        """The control stream wrote `message`; a channel frame no longer counts as queued."""
        if message.WhichOneof("frame") != "channel_frame":
            return
        channel = self._channels.get(message.channel_frame.channel_id)
        if channel is not None:
            channel.queued_to_agent -= len(message.channel_frame.frame.ciphertext)
            if channel.queued_to_agent < self._max_queued:
                channel._drained.set()

    def from_agent(self, stream: AgentStream, message: agent_pb.ControlRequest) -> str | None:
        """Relay a channel message of the agent; a protocol violation, in words, or None.

        Messages for channels that the client recently left are dropped: the agent learns of the
        end from the ChannelClose the broker sent, and may have been sending meanwhile. A channel
        the broker never opened on this stream is a violation.
        """
        kind = message.WhichOneof("frame")
        if kind == "channel_answer":
            channel_id = message.channel_answer.channel_id
        elif kind == "channel_frame":
            channel_id = message.channel_frame.channel_id
        elif kind == "channel_close":
            channel_id = message.channel_close.channel_id
        else:
            return f"{kind or 'an empty message'} is not a channel message"
        channel = self._channels.get(channel_id)
        if channel is None:
            if self._gone.get(channel_id) is stream:
                return None
            return f"{kind} for a channel that is not open on this stream"
        if channel.stream is not stream:
            return f"{kind} for a channel that is not open on this stream"
        if channel.ended:
            return None
        if kind == "channel_answer":
            return self._answer(channel, message.channel_answer)
        if kind == "channel_frame":
            if not channel.answered:
                return "a channel frame before the channel's answer"
            frame = message.channel_frame.frame
            channel.queued_to_client += len(frame.ciphertext)
            if channel.queued_to_client > self._max_queued:
                self._finish(
                    channel,
                    ResourceExhausted("the agent sent more than the channel's flow control allows"),
                )
                return None
            channel._deliver(pb.ChannelResponse(channel_frame=frame))
            return None
        self._finish(channel, None, tell_agent=False, detached=message.channel_close.detached)
        return None

    def _answer(self, channel: RelayedChannel, answer: agent_pb.ChannelAnswer) -> str | None:
        if channel.answered:
            return "a second answer to a channel"
        which = answer.WhichOneof("answer")
        if which == "syn_ack":
            channel.answered = True
            channel._deliver(pb.ChannelResponse(syn_ack=answer.syn_ack))
        elif which == "reject":
            channel._deliver(pb.ChannelResponse(reject=answer.reject))
            self._finish(channel, None, tell_agent=False)
        else:
            return "a channel answer with neither SYN-ACK nor Reject"
        return None

    def agent_gone(self, stream: AgentStream) -> None:
        """The agent's control stream ended: its channels end with UNAVAILABLE."""
        for channel in self:
            if channel.stream is stream:
                self._finish(
                    channel, Unavailable("the broker lost the target's agent"), tell_agent=False
                )

    def _finish(
        self,
        channel: RelayedChannel,
        error: MrzapError | None,
        *,
        tell_agent: bool = True,
        detached: bool = False,
    ) -> None:
        """End the channel for the client; the entry stays until the client's call is over."""
        if channel.ended:
            return
        channel._end(error, detached=detached)
        if tell_agent:
            channel.stream.send(
                agent_pb.ControlResponse(
                    channel_close=agent_pb.ChannelClose(
                        channel_id=channel.channel_id,
                        reason=error.message if error else "the channel ended",
                    )
                )
            )

    def _stream(self, target_id: str) -> AgentStream:
        stream = self._agents.get(target_id)
        if stream is None or stream.closed:
            raise Unavailable(f"target {target_id} is offline: its agent is not connected")
        return stream
