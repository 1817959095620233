"""One background task that runs a step every N seconds until stopped.

The roles' timers (the registry's sweep, the broker's housekeeping and revocation poll, the audit
role's recording purge) all need the same things: start on the running loop, stop by cancelling
and waiting, and survive a failed round — the database may be away for a while, and the next
round retries — so a timer never dies silently while its role keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .errors import MrzapError

__all__ = ["Periodic"]


class Periodic:
    """Runs `step` every `interval_s` seconds in one task on the running loop.

    With `at_once` the first round runs when started, otherwise one interval later. A round that
    raises is logged on `log` (a MrzapError as one line: it already says what went wrong; anything
    else with its traceback) and the next round runs as usual.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval_s: float,
        *,
        log: logging.Logger,
        failed: str,
        at_once: bool = True,
    ) -> None:
        self._name = name
        self._step = step
        self._interval_s = interval_s
        self._log = log
        self._failed = failed
        self._at_once = at_once
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task; call from the running loop. Starting twice is harmless."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Stop the task, cancelling a round in progress and waiting for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        if not self._at_once:
            await asyncio.sleep(self._interval_s)
        while True:
            try:
                await self._step()
            except MrzapError as error:
                self._log.error("%s: %s", self._failed, error)
            except Exception:  # the next round retries; the timer must outlive a bad round
                self._log.exception("%s; retrying in %g s", self._failed, self._interval_s)
            await asyncio.sleep(self._interval_s)
