"""The registry's periodic task: `Registry.sweep` every `sweep_interval`.

A failed sweep (the database briefly unreachable) is logged and retried at the next interval; the
task only ends when stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ._domain import Registry

__all__ = ["Sweeper"]

_log = logging.getLogger("mrzap.registry")


class Sweeper:
    """Runs the registry's time-based transitions in the background."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the periodic task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="registry-sweep")

    async def stop(self) -> None:
        """Stop the task, waiting for a sweep in progress to be cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        interval = self._registry.config.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                result = await self._registry.sweep()
            except Exception:
                _log.exception("the registry sweep failed; retrying in %g s", interval)
                continue
            for target_id in result.offline:
                _log.info("target %s is OFFLINE: no keepalive", target_id)
            for target_id in result.terminated:
                _log.info("target %s is TERMINATED: offline past its cleanup timeout", target_id)
            for target_id in result.abandoned:
                _log.info("target %s removed: its activation token expired unused", target_id)
