"""The broker's end of agents' control streams: `AgentService.Control` (PROTOCOL.md section 7).

Each stream runs as one async generator. A small reader task moves the agent's messages into the
stream's queue; messages for the agent (keepalive probes, closes, later channel traffic) go into
the same queue, so everything about one stream happens in order in one place without locks:

    broker: Challenge{nonce}
    agent:  agent_auth = Signed(AgentAuth{target_id, nonce, timestamp_ms, version})
    broker: Welcome{broker_id, region, keepalive_interval}     (or ControlClose and a status)
    agent:  started                     (on the first stream of an agent process; see below)
    agent:  connection_ended            (whenever a detached shell ends by itself)
    both:   keepalives ... until either side sends ControlClose

A refused stream gets ControlClose{reason, message}, an audit event (`agent_refused`) and an error
status. A newer stream of the same target supersedes the older one, which gets
ControlClose{SUPERSEDED}. When the current stream of a target ends, the registry hears
`agent_disconnected`. An agent process that just started has nothing running from before: its
`started` reaches `on_agent_started`, which closes the connections of the old process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from auth._interceptor import Access
from bastion.agent.v1 import agent_service_pb2 as pb
from mrzap.clock import Clock
from mrzap.errors import InvalidArgument, MrzapError, ResourceExhausted, Unavailable
from mrzap.timestamps import to_duration

from ._auth import Refusal, authenticate_agent
from ._chunk_queue import ChunkQueue, ChunkQueues
from ._config import BrokerConfig
from ._connected import AgentStream, ConnectedAgents
from ._directory import TargetDirectory
from ._housekeeping import Housekeeper
from ._recordings import RecordingIntake
from ._relay import ChannelRelay

__all__ = ["ACCESS", "AgentServicer", "add_agent_servicer"]

_SERVICE = "bastion.agent.v1.AgentService"

#: Who may call each method of AgentService: agents prove who they are inside the stream.
ACCESS: dict[str, Access] = {f"/{_SERVICE}/Control": Access.AGENT}

#: The agent's messages that belong to a channel and go to the relay.
_CHANNEL_KINDS = frozenset({"channel_answer", "channel_frame", "channel_close"})

_log = logging.getLogger("mrzap.broker")
_Context = grpc.aio.ServicerContext[Any, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Unreadable:
    """A message the stream refuses before parsing it fully: too large, or not a ControlRequest."""

    message: str
    """What was wrong with it."""

    oversized: bool
    """Whether it was refused for its size."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Ended:
    """The agent's side of the stream is over (half-closed, or the call broke)."""

    reason: str


def request_deserializer(limit: int) -> Callable[[bytes], pb.ControlRequest | Unreadable]:
    """Parse a ControlRequest unless it is larger than `limit` bytes or malformed.

    Returning a marker instead of raising lets the stream answer with ControlClose and an audit
    event; a deserializer that raises would just fail the call.
    """

    def deserialize(raw: bytes) -> pb.ControlRequest | Unreadable:
        if len(raw) > limit:
            return Unreadable(f"a message of {len(raw)} bytes exceeds the limit of {limit}", True)
        try:
            return pb.ControlRequest.FromString(raw)
        except DecodeError:
            return Unreadable("a message that is not a ControlRequest", False)

    return deserialize


class AgentServicer:
    """Serves `AgentService.Control` for the agents of this broker."""

    def __init__(
        self,
        config: BrokerConfig,
        directory: TargetDirectory,
        agents: ConnectedAgents,
        housekeeper: Housekeeper,
        clock: Clock,
        relay: ChannelRelay | None = None,
        on_welcome: Callable[[AgentStream], None] | None = None,
        recordings: RecordingIntake | None = None,
    ) -> None:
        self._config = config
        # Each target's chunks go to the intake in order, beside its stream (see _chunk_queue);
        # without an intake they are dropped (broker unit tests).
        self._chunk_queues = ChunkQueues(_dropped if recordings is None else recordings.receive)
        self.on_agent_started: Callable[[str, float], Awaitable[object]] | None = None
        """Called with the target id and the time its stream was admitted when an agent process
        says it has just started (AgentStarted), after the chunks its target's streams sent
        before that."""
        self.on_connection_ended: Callable[[str, str], Awaitable[object]] | None = None
        """Called with the target id and the connection id when an agent says a detached shell
        ended (ConnectionEnded), in the same order."""
        # Queues what every agent must hear first (the revocations in force) right after Welcome.
        self._on_welcome = on_welcome
        # Not `relay or ...`: an empty relay has len() 0.
        self._relay = ChannelRelay(agents) if relay is None else relay
        self._directory = directory
        self._agents = agents
        self._housekeeper = housekeeper
        self._clock = clock
        self._admissions = asyncio.Semaphore(config.max_concurrent_admissions)
        self._welcome_interval = to_duration(config.keepalive_interval_s)
        self._stream_endings: set[asyncio.Task[None]] = set()

    async def streams_ended(self) -> None:
        """Wait until the streams that ended have finished storing and reporting (the service
        stopping, after the gRPC server: before the database closes)."""
        while self._stream_endings:
            await asyncio.wait(set(self._stream_endings))

    async def Control(
        self,
        requests: AsyncIterator[pb.ControlRequest | Unreadable],
        context: _Context,
    ) -> AsyncIterator[pb.ControlResponse]:
        """One agent's control stream, from the challenge to its end."""
        address = context.peer() or ""
        events: asyncio.Queue[object] = asyncio.Queue()
        reader = asyncio.get_running_loop().create_task(_read(requests, events))
        stream: AgentStream | None = None
        chunks: ChunkQueue | None = None
        try:
            nonce = secrets.token_bytes(32)
            yield pb.ControlResponse(challenge=pb.Challenge(nonce=nonce))
            first = await self._first_message(events)
            # Admission is bounded: a reconnection storm of thousands of agents must queue here
            # rather than swamp the registry's database with concurrent transactions.
            async with self._admissions:
                identity = await authenticate_agent(
                    first, nonce, self._directory, self._clock.now(), self._config.max_clock_skew_s
                )
                # Before the stream can relay: connections started on this agent come after it.
                admitted_at = self._clock.now()
                stream = AgentStream(identity.target_id, address, events)
                previous = self._agents.add(stream)
                if previous is not None:
                    previous.close(
                        pb.CONTROL_CLOSE_REASON_SUPERSEDED,
                        "a newer control stream of this target replaced this one",
                    )
                    # Now, not when the old stream's handler ends: an agent that reconnected
                    # may have left a connection that cannot even take the ControlClose.
                    self._relay.agent_gone(previous)
                try:
                    await self._directory.agent_connected(
                        identity.target_id, self._config.broker_id, address
                    )
                except MrzapError as error:
                    _log.error("could not record agent %s online: %s", identity.target_id, error)
                    raise Refusal(
                        pb.CONTROL_CLOSE_REASON_UNSPECIFIED,
                        Unavailable("the broker cannot reach the registry; try again later"),
                        identity.target_id,
                    ) from None
            _log.info(
                "agent %s online from %s (version %s)",
                identity.target_id,
                address,
                identity.version,
            )
            yield pb.ControlResponse(
                welcome=pb.Welcome(
                    broker_id=self._config.broker_id,
                    region=self._config.region,
                    keepalive_interval=self._welcome_interval,
                    accepts_compressed_recording_chunks=True,
                )
            )
            if self._on_welcome is not None:
                self._on_welcome(stream)
            chunks = self._chunk_queues.acquire(stream.target_id)
            async for response in self._serve(stream, events, chunks, admitted_at):
                yield response
        except Refusal as refusal:
            if stream is not None:
                stream.end_reason = refusal.message
            await self._refused(refusal, address)
            yield pb.ControlResponse(
                close=pb.ControlClose(reason=refusal.close_reason, message=refusal.message)
            )
            raise refusal.error from None
        finally:
            reader.cancel()
            if stream is not None:
                # Nothing here may come after an await: grpc.aio cancels this handler when the
                # agent's call ends, often while the generator is already in this block, and the
                # cancellation lands at the first await. It used to skip these two lines now and
                # then, leaving the clients of a vanished agent's channels waiting for ever.
                self._relay.agent_gone(stream)
                offline = self._agents.remove(stream) and not stream.draining
                # The rest awaits the database: a task of its own finishes it regardless.
                ending = asyncio.get_running_loop().create_task(
                    self._stream_ended(stream, chunks is not None, offline=offline)
                )
                self._stream_endings.add(ending)
                ending.add_done_callback(self._stream_endings.discard)
                await asyncio.shield(ending)

    async def _stream_ended(self, stream: AgentStream, release: bool, *, offline: bool) -> None:
        """Tell the registry the agent is offline, then store what it sent before it left."""
        # First: storing the chunks may take seconds, and an agent that reconnects meanwhile
        # must not be reported offline after it is back.
        if offline:
            _log.info("agent %s offline: %s", stream.target_id, stream.end_reason)
            with contextlib.suppress(MrzapError):  # the registry's sweep catches up
                await self._directory.agent_disconnected(
                    stream.target_id, self._config.broker_id, stream.end_reason
                )
        if release:
            await self._chunk_queues.release(stream.target_id)

    async def _first_message(self, events: asyncio.Queue[object]) -> pb.ControlRequest:
        """The agent's first message, which must come within the auth timeout."""
        try:
            first = await asyncio.wait_for(events.get(), self._config.auth_timeout_s)
        except TimeoutError:
            raise Refusal(
                pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR,
                InvalidArgument(
                    f"no agent_auth within {self._config.auth_timeout_s:g} s of the challenge"
                ),
            ) from None
        if isinstance(first, _Ended):
            raise Refusal(
                pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR,
                InvalidArgument(f"the stream ended before agent_auth ({first.reason})"),
            )
        if isinstance(first, Unreadable):
            raise _unreadable(first, "")
        assert isinstance(first, pb.ControlRequest)
        return first

    async def _serve(
        self,
        stream: AgentStream,
        events: asyncio.Queue[object],
        chunks: ChunkQueue,
        admitted_at: float,
    ) -> AsyncIterator[pb.ControlResponse]:
        """Relay queued messages to the agent and handle the agent's, until the stream ends."""
        while True:
            event = await events.get()
            if isinstance(event, pb.ControlResponse):
                yield event
                self._relay.sent_to_agent(event)
                if event.HasField("close"):
                    return
            elif isinstance(event, _Ended):
                stream.end_reason = event.reason
                return
            elif isinstance(event, Unreadable):
                raise _unreadable(event, stream.target_id)
            else:
                assert isinstance(event, pb.ControlRequest)
                stream.last_heard = time.monotonic()
                self._housekeeper.saw(stream.target_id)
                kind = event.WhichOneof("frame")
                if kind == "keepalive":
                    continue
                if kind == "close":
                    reason = pb.ControlCloseReason.Name(event.close.reason)
                    stream.end_reason = f"the agent closed the stream ({reason})"
                    return
                if kind in _CHANNEL_KINDS:
                    violation = self._relay.from_agent(stream, event)
                    if violation is None:
                        continue
                elif kind == "recording_chunk":
                    # Stored in stream order (a connection's chunks must be stored in chain
                    # order) by the stream's ChunkQueue, beside this loop: storing takes
                    # milliseconds, and the agent's channels must not wait for it. A bad chunk
                    # is refused and logged; the stream goes on.
                    await chunks.put(event.recording_chunk)
                    continue
                elif kind == "compressed_recording_chunk":
                    await chunks.put(event.compressed_recording_chunk, compressed=True)
                    continue
                elif kind == "started":
                    if self.on_agent_started is not None:
                        await chunks.then(
                            functools.partial(self.on_agent_started, stream.target_id, admitted_at)
                        )
                    continue
                elif kind == "connection_ended":
                    if self.on_connection_ended is not None:
                        await chunks.then(
                            functools.partial(
                                self.on_connection_ended,
                                stream.target_id,
                                event.connection_ended.connection_id,
                            )
                        )
                    continue
                else:
                    violation = f"{kind or 'an empty message'} is not expected on this stream"
                raise Refusal(
                    pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR,
                    InvalidArgument(violation),
                    stream.target_id,
                )

    async def _refused(self, refusal: Refusal, address: str) -> None:
        _log.warning(
            "refused agent %s from %s: %s", refusal.target_id or "-", address, refusal.message
        )
        try:
            async with self._admissions:
                await self._directory.agent_refused(refusal.target_id, refusal.message, address)
        except MrzapError as error:
            _log.error("could not audit a refused agent: %s", error)


async def _dropped(_target_id: str, _data: bytes, _compressed: bool) -> None:
    """The intake of a broker that keeps no recordings."""


def _unreadable(event: Unreadable, target_id: str) -> Refusal:
    if event.oversized:
        return Refusal(
            pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR, ResourceExhausted(event.message), target_id
        )
    return Refusal(
        pb.CONTROL_CLOSE_REASON_PROTOCOL_ERROR, InvalidArgument(event.message), target_id
    )


async def _read(
    requests: AsyncIterator[pb.ControlRequest | Unreadable], events: asyncio.Queue[object]
) -> None:
    """Move the agent's messages into the stream's queue, then say how its side ended."""
    try:
        async for request in requests:
            events.put_nowait(request)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # the call broke: the agent vanished, or gRPC refused a message
        events.put_nowait(_Ended(f"the stream broke ({type(error).__name__})"))
    else:
        events.put_nowait(_Ended("the agent ended the stream"))


def add_agent_servicer(servicer: AgentServicer, server: grpc.aio.Server, limit: int) -> None:
    """Register `servicer` with a deserializer that enforces the per-message size `limit`."""
    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Control": grpc.stream_stream_rpc_method_handler(
                servicer.Control,
                request_deserializer=request_deserializer(limit),
                response_serializer=pb.ControlResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
