"""Carries signed recording chunks to the broker, across control-stream drops (PROTOCOL.md §8).

Recordings outlive control streams: a detached shell keeps recording while the agent reconnects.
`RecordingUplink` holds the chunks of every recording in one queue, in the order they were cut,
and a pump task writes them on the current stream as `ControlRequest.recording_chunk`, or
compressed as `compressed_recording_chunk` when the broker's Welcome accepts that (the broker
serves every agent: compressing here keeps that work off it, and the bytes off the wire):

- while no stream is up, chunks wait in the queue;
- the queue is bounded (`max_bytes`): when it is full, `accepting` turns false and the recorded
  sessions stop reading their terminals (back-pressure, as a slow client does), so a long outage
  slows the shells instead of losing evidence or filling memory;
- a write on a stream that then drops may or may not have reached the broker, and the stream has
  no acknowledgement, so the last chunks written (`resend_bytes` of them) are kept and written
  again, first and in order, on the next stream. The broker ignores a chunk it already stored
  with the same bytes (`broker/_recordings.py`), so resending never duplicates anything.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bastion.agent.v1 import agent_service_pb2 as pb
from mrzap.recording import compress_chunk_async

__all__ = ["DEFAULT_QUEUE_BYTES", "DEFAULT_RESEND_BYTES", "RecordingUplink"]

_log = logging.getLogger("mrzap.agent.recordings")

#: Chunks waiting for a stream, above which recorded sessions pause.
DEFAULT_QUEUE_BYTES = 16 * 1024 * 1024
#: Chunks already written that are written again after a reconnection.
DEFAULT_RESEND_BYTES = 2 * 1024 * 1024

Send = Callable[[pb.ControlRequest], Awaitable[None]]


class RecordingUplink:
    """The agent's queue of recording chunks on their way to the broker."""

    def __init__(
        self, *, max_bytes: int = DEFAULT_QUEUE_BYTES, resend_bytes: int = DEFAULT_RESEND_BYTES
    ) -> None:
        self._max_bytes = max_bytes
        self._resend_bytes = resend_bytes
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._sent: collections.deque[bytes] = collections.deque()
        self._sent_bytes = 0
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._room = asyncio.Event()
        self._room.set()
        self._pump: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    @property
    def queued_bytes(self) -> int:
        """Bytes of chunks not written yet."""
        return self._queued_bytes

    @property
    def accepting(self) -> bool:
        """Whether recorded sessions may produce more chunks now (the queue has room)."""
        return self._queued_bytes < self._max_bytes

    def on_room(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` whenever the queue gets room again; returns a function that stops it."""
        self._listeners.append(listener)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return stop

    def put(self, chunks: list[bytes]) -> None:
        """Queue chunks (already signed, in chain order). Never blocks: the bound is `accepting`."""
        for raw in chunks:
            self._queue.append(raw)
            self._queued_bytes += len(raw)
        if chunks:
            self._ready.set()
            self._empty.clear()
        if not self.accepting:
            self._room.clear()

    def connected(self, send: Send, *, compress: bool = False) -> None:
        """A stream is up: write what was sent last time again, then every queued chunk
        (`compress`ed, if the broker accepts that)."""
        self.disconnected()
        # The chunks maybe lost with the previous stream go first, so the chain stays in order.
        self._queue.extendleft(reversed(self._sent))
        self._queued_bytes += self._sent_bytes
        self._sent.clear()
        self._sent_bytes = 0
        if self._queue:
            self._empty.clear()
        if not self.accepting:
            self._room.clear()
        self._ready.set()
        self._pump = asyncio.ensure_future(self._run(send, compress))

    def disconnected(self) -> None:
        """The stream is gone: stop writing; queued chunks wait for the next one."""
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None

    async def room(self) -> None:
        """Return once the queue has room (at once if it has)."""
        await self._room.wait()

    async def flushed(self) -> None:
        """Return once every queued chunk has been written (the agent is stopping)."""
        await self._empty.wait()

    async def _run(self, send: Send, compress: bool) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            raw = self._queue[0]
            try:
                if compress:
                    message = pb.ControlRequest(
                        compressed_recording_chunk=await compress_chunk_async(raw)
                    )
                else:
                    message = pb.ControlRequest(recording_chunk=raw)
                await send(message)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the stream broke: the control loop reconnects
                _log.info("recording upload paused: %s", error)
                return
            # Popped only once written, so a cancelled write leaves the chunk queued.
            self._queue.popleft()
            self._queued_bytes -= len(raw)
            self._remember(raw)
            if not self._queue:
                self._empty.set()
            if self._queued_bytes < self._max_bytes:
                self._room.set()
                for listener in list(self._listeners):
                    listener()

    def _remember(self, raw: bytes) -> None:
        self._sent.append(raw)
        self._sent_bytes += len(raw)
        while self._sent and self._sent_bytes - len(self._sent[0]) >= self._resend_bytes:
            self._sent_bytes -= len(self._sent.popleft())
