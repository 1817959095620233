"""`ChunkQueue`: an agent stream's recording chunks stored in order, without stalling the stream."""

from __future__ import annotations

import asyncio

import pytest

from broker._chunk_queue import ChunkQueue, ChunkQueues


class SlowIntake:
    """An intake whose store waits until the test lets it go, recording what it stored."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, bytes]] = []
        self.go = asyncio.Event()
        self.started = asyncio.Event()

    async def receive(self, target_id: str, raw: bytes, _compressed: bool) -> bool:
        self.started.set()
        await self.go.wait()
        if raw == b"boom":
            raise RuntimeError("the store failed")
        self.stored.append((target_id, raw))
        return True


@pytest.mark.asyncio
async def test_put_returns_while_a_chunk_is_being_stored_and_order_is_kept() -> None:
    intake = SlowIntake()
    queue = ChunkQueue(intake.receive, "t-1")
    await queue.put(b"0")
    await intake.started.wait()  # chunk 0 is in the (blocked) store ...
    for seq in (b"1", b"2", b"boom", b"3"):
        await queue.put(seq)  # ... and the stream goes on: nothing here waits for it
    assert intake.stored == []
    intake.go.set()
    await queue.close()
    # In arrival order; a chunk whose store failed does not stop the ones after it.
    assert intake.stored == [("t-1", b"0"), ("t-1", b"1"), ("t-1", b"2"), ("t-1", b"3")]


@pytest.mark.asyncio
async def test_work_queued_after_chunks_runs_once_they_are_stored() -> None:
    intake = SlowIntake()
    queue = ChunkQueue(intake.receive, "t-1")
    seen: list[list[bytes]] = []

    async def work() -> None:
        seen.append([raw for _, raw in intake.stored])

    await queue.put(b"0")
    await intake.started.wait()
    await queue.then(work)
    await queue.put(b"1")
    intake.go.set()
    await queue.close()
    assert seen == [[b"0"]]
    assert [raw for _, raw in intake.stored] == [b"0", b"1"]


@pytest.mark.asyncio
async def test_a_full_queue_pushes_back_on_the_stream() -> None:
    intake = SlowIntake()
    queue = ChunkQueue(intake.receive, "t-1", max_waiting=2)
    await queue.put(b"0")
    await intake.started.wait()
    await queue.put(b"1")
    await queue.put(b"2")
    third = asyncio.ensure_future(queue.put(b"3"))
    await asyncio.sleep(0)
    assert not third.done()  # bounded: two wait, the stream waits for the third
    intake.go.set()
    await third
    await queue.close()
    assert [raw for _, raw in intake.stored] == [b"0", b"1", b"2", b"3"]


@pytest.mark.asyncio
async def test_close_gives_up_after_its_time_limit() -> None:
    intake = SlowIntake()  # never let go
    queue = ChunkQueue(intake.receive, "t-1")
    await queue.put(b"0")
    await intake.started.wait()
    await queue.close(timeout_s=0.05)  # returns (the stored chunks are lost, and logged)
    assert intake.stored == []


@pytest.mark.asyncio
async def test_a_new_stream_of_a_target_queues_behind_the_old_ones_chunks() -> None:
    """A reconnected agent's chunks are stored after those its superseded stream received."""
    intake = SlowIntake()
    queues = ChunkQueues(intake.receive)
    old = queues.acquire("t-1")
    await old.put(b"0")
    await intake.started.wait()
    await old.put(b"1")
    new = queues.acquire("t-1")  # the new stream, while the old one is still open
    assert new is old
    assert queues.acquire("t-2") is not old  # other targets have their own
    await queues.release("t-2")
    await new.put(b"2")
    await queues.release("t-1")  # the old stream ends: the new one still uses the queue
    intake.go.set()
    await new.put(b"3")
    await queues.release("t-1")  # the last one: what is queued is stored, then the worker stops
    assert [raw for _, raw in intake.stored] == [b"0", b"1", b"2", b"3"]
    assert queues.acquire("t-1") is not old  # a later stream starts afresh
    await queues.release("t-1")
