"""The registry's periodic task: `Registry.sweep` every `sweep_interval`.

A failed sweep (the database briefly unreachable) is logged and retried at the next interval; the
task only ends when stopped (mrzap.periodic.Periodic).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from mrzap.periodic import Periodic

from ._domain import Registry

__all__ = ["Sweeper"]

_log = logging.getLogger("mrzap.registry")


class Sweeper:
    """Runs the registry's time-based transitions in the background."""

    def __init__(
        self,
        registry: Registry,
        on_terminated: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        """`on_terminated(target_id)` runs for each target the sweep made TERMINATED (whatever
        depended on its agent ends then)."""
        self._registry = registry
        self._on_terminated = on_terminated
        self._timer = Periodic(
            "registry-sweep",
            self.sweep_once,
            registry.config.sweep_interval_s,
            log=_log,
            failed="the registry sweep failed",
            at_once=False,
        )

    def start(self) -> None:
        """Start the periodic task on the running loop."""
        self._timer.start()

    async def stop(self) -> None:
        """Stop the task, waiting for a sweep in progress to be cancelled."""
        await self._timer.stop()

    async def sweep_once(self) -> None:
        """One sweep, with its log lines and `on_terminated` calls (the timer runs it)."""
        result = await self._registry.sweep()
        for target_id in result.offline:
            _log.info("target %s is OFFLINE: no keepalive", target_id)
        for target_id in result.terminated:
            _log.info("target %s is TERMINATED: offline past its cleanup timeout", target_id)
            if self._on_terminated is None:
                continue
            try:
                await self._on_terminated(target_id)
            except Exception:  # the transition is done and never swept again: log, go on
                _log.exception("could not end what depended on terminated target %s", target_id)
        for target_id in result.abandoned:
            _log.info("target %s removed: its activation token expired unused", target_id)
