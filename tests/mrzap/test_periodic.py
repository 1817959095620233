"""mrzap.periodic.Periodic: rounds go on after a failed one, and stop ends the task."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mrzap.errors import Unavailable
from mrzap.periodic import Periodic


@pytest.mark.asyncio
async def test_a_failed_round_is_logged_and_the_next_round_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds: list[int] = []
    third = asyncio.Event()

    async def step() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise Unavailable("the database is away")
        if len(rounds) == 2:
            raise RuntimeError("a bug")
        third.set()

    timer = Periodic("test", step, 0.001, log=logging.getLogger("test.periodic"), failed="oops")
    with caplog.at_level(logging.ERROR, logger="test.periodic"):
        timer.start()
        await third.wait()
        await timer.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "oops: the database is away"
    assert messages[1].startswith("oops; retrying in")
    assert caplog.records[1].exc_info is not None


@pytest.mark.asyncio
async def test_stop_cancels_a_round_in_progress_and_start_twice_runs_one_task() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    timer = Periodic("test", step, 0.001, log=logging.getLogger("test.periodic"), failed="x")
    timer.start()
    timer.start()
    await started.wait()
    await timer.stop()
    assert cancelled.is_set()
    assert calls == 1
    await timer.stop()  # stopping a stopped timer is harmless


@pytest.mark.asyncio
async def test_without_at_once_the_first_round_waits_an_interval() -> None:
    ran = False

    async def step() -> None:
        nonlocal ran
        ran = True

    timer = Periodic(
        "test", step, 3600.0, log=logging.getLogger("test.periodic"), failed="x", at_once=False
    )
    timer.start()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await timer.stop()
    assert not ran
