"""An agent's recording chunks, stored in arrival order beside its control stream, not inside it.

An agent's control stream carries its channels' frames and its recording chunks (PROTOCOL.md §7,
§8) in one order. Storing a chunk means verifying its signature and chain, compressing it and a
database transaction: milliseconds. Awaited inside the stream's loop, every chunk would stop the
relay of every channel of that agent for that long, so a busy recorded shell would throttle
itself (measured: 20 MiB of `cat` at a few MB/s, most of the broker's time in the intake).

`ChunkQueue` hands each chunk to one worker task per target instead. Chunks are stored one at a
time in the order they arrived, which is all a connection's hash chain needs. The queue is
bounded: when `max_waiting` chunks wait, `put` waits too, so an intake that cannot keep up slows
the agent's stream (and, through HTTP/2 flow control, the agent) rather than growing without
limit. When the stream ends, the chunks already received are still stored, up to a time limit.

`ChunkQueues` gives every stream of one target the same queue while any of them is open: an agent
that reconnects before the broker noticed its old stream die (the new stream supersedes it) sends
chunks that must be stored after those the old stream received, or the chain would seem to skip.
For the same reason a restarted agent's recordings are given up (`then`) only after the chunks
already received are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_MAX_WAITING", "ChunkQueue", "ChunkQueues"]

#: Chunks waiting for the intake before the stream waits too (each is at most a few hundred KiB).
DEFAULT_MAX_WAITING = 64
#: How long the chunks received before the stream ended may take to be stored.
_DRAIN_TIMEOUT_S = 10.0

_log = logging.getLogger("mrzap.broker.recordings")

#: Stores one chunk of an agent (`target_id`, the exact signed bytes or, when the flag says so,
#: them compressed); never raises for a bad one.
Receive = Callable[[str, bytes, bool], Awaitable[object]]
#: Work about the target's recordings that must come after the chunks received before it.
Work = Callable[[], Awaitable[object]]


class ChunkQueue:
    """The recording chunks of one agent stream on their way to the intake, in order."""

    def __init__(
        self, receive: Receive, target_id: str, max_waiting: int = DEFAULT_MAX_WAITING
    ) -> None:
        self._receive = receive
        self._target_id = target_id
        self._queue: asyncio.Queue[tuple[bytes, bool] | Work | None] = asyncio.Queue(max_waiting)
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def put(self, data: bytes, *, compressed: bool = False) -> None:
        """Queue one chunk (`compressed` by the agent or not); waits only while `max_waiting`
        chunks are queued already."""
        await self._queue.put((data, compressed))

    async def then(self, work: Work) -> None:
        """Run `work` once every chunk queued before it is stored (like `put`, it waits only
        while the queue is full)."""
        await self._queue.put(work)

    async def close(self, timeout_s: float = _DRAIN_TIMEOUT_S) -> None:
        """Store what was queued (up to `timeout_s` in all), then stop the worker."""

        async def drain() -> None:
            await self._queue.put(None)  # after every chunk already queued
            await asyncio.shield(self._worker)

        try:
            await asyncio.wait_for(drain(), timeout_s)
        except TimeoutError:
            _log.warning(
                "gave up storing %d recording chunks of agent %s after its stream ended",
                self._queue.qsize(),
                self._target_id,
            )
        finally:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            try:
                if isinstance(item, tuple):
                    await self._receive(self._target_id, *item)
                else:
                    await item()
            except Exception:  # the intake logs its own failures; this one keeps the worker alive
                _log.exception("recording intake failed for agent %s", self._target_id)


class ChunkQueues:
    """One `ChunkQueue` per target, shared by the target's open streams."""

    def __init__(self, receive: Receive, max_waiting: int = DEFAULT_MAX_WAITING) -> None:
        self._receive = receive
        self._max_waiting = max_waiting
        self._queues: dict[str, tuple[ChunkQueue, int]] = {}

    def acquire(self, target_id: str) -> ChunkQueue:
        """The target's queue, for one more stream; give it back with `release`."""
        queue, users = self._queues.get(target_id) or (
            ChunkQueue(self._receive, target_id, self._max_waiting),
            0,
        )
        self._queues[target_id] = (queue, users + 1)
        return queue

    async def release(self, target_id: str) -> None:
        """A stream of the target ended; the last one stores what is queued and stops the worker."""
        queue, users = self._queues[target_id]
        if users > 1:
            self._queues[target_id] = (queue, users - 1)
            return
        del self._queues[target_id]
        await queue.close()
