"""One timer for all of the broker's control streams: keepalives, dead streams, last-seen batches.

Per-agent timers would cost memory and wake-ups for every idle agent; instead a single task wakes
a few times per keepalive interval, sends a keepalive on each stream the broker has been quiet on
for most of an interval, ends streams the agent has been silent on for `silence_intervals`, and
writes the targets heard from since the last flush to the registry in one statement.

The keepalive rule (PROTOCOL.md section 7, "keepalives both ways"): the broker probes, the agent
answers every broker keepalive at once and sends one of its own only when it has sent nothing for
an interval. The broker never answers, so keepalives can never bounce back and forth.
"""

from __future__ import annotations

import logging
import time

from bastion.agent.v1 import agent_service_pb2 as pb
from mrzap.clock import Clock
from mrzap.periodic import Periodic
from mrzap.timestamps import to_timestamp

from ._config import BrokerConfig
from ._connected import ConnectedAgents
from ._directory import TargetDirectory

__all__ = ["Housekeeper"]

_log = logging.getLogger("mrzap.broker")

#: The broker probes a stream it has sent nothing on for this share of the keepalive interval,
#: so its probe reaches the agent before the agent's own keepalive falls due.
_PROBE_AFTER = 0.75
#: Wake-ups per keepalive interval.
_TICKS_PER_INTERVAL = 8


class Housekeeper:
    """The broker's single periodic task."""

    def __init__(
        self,
        config: BrokerConfig,
        agents: ConnectedAgents,
        directory: TargetDirectory,
        clock: Clock,
    ) -> None:
        self._config = config
        self._agents = agents
        self._directory = directory
        self._clock = clock
        self._seen: set[str] = set()
        self._next_flush = 0.0
        # A few ticks per keepalive interval, and at least one per flush interval.
        tick = min(config.keepalive_interval_s / _TICKS_PER_INTERVAL, config.seen_flush_interval_s)
        self._timer = Periodic(
            "broker-housekeeping",
            self._tick,
            tick,
            log=_log,
            failed="housekeeping failed",
            at_once=False,
        )

    def saw(self, target_id: str) -> None:
        """The agent of `target_id` sent something; it is written at the next flush."""
        self._seen.add(target_id)

    def start(self) -> None:
        """Start the periodic task on the running loop."""
        self._next_flush = time.monotonic() + self._config.seen_flush_interval_s
        self._timer.start()

    async def stop(self) -> None:
        """Stop the task and write what was heard since the last flush."""
        await self._timer.stop()
        await self.flush_seen()

    def check_streams(self, now: float | None = None) -> None:
        """Probe quiet streams and end silent ones; `now` is monotonic seconds."""
        now = time.monotonic() if now is None else now
        interval = self._config.keepalive_interval_s
        silence = self._config.silence_limit_s
        probe: pb.ControlResponse | None = None
        for stream in self._agents:
            if now - stream.last_heard > silence:
                stream.close(
                    pb.CONTROL_CLOSE_REASON_UNSPECIFIED,
                    f"no keepalive from the agent for {silence:g} s",
                )
            elif now - stream.last_sent >= interval * _PROBE_AFTER:
                if probe is None:  # one message object serves every stream of this tick
                    probe = pb.ControlResponse(
                        keepalive=pb.Keepalive(send_time=to_timestamp(self._clock.now()))
                    )
                stream.send(probe)

    async def flush_seen(self) -> None:
        """Write the targets heard from since the last flush, in one call; end the streams of
        those that were deleted meanwhile."""
        if not self._seen:
            return
        seen, self._seen = self._seen, set()
        try:
            gone = await self._directory.agents_seen(seen, self._clock.now())
        except Exception:
            # Keep them for the next flush: a missed last_seen would make a live target look
            # offline to the registry's sweep.
            self._seen |= seen
            _log.exception("could not record keepalives of %d agents; retrying", len(seen))
            return
        for target_id in gone:
            stream = self._agents.get(target_id)
            if stream is not None:
                stream.close(pb.CONTROL_CLOSE_REASON_TARGET_DELETED, "the target was deleted")

    async def _tick(self) -> None:
        now = time.monotonic()
        self.check_streams(now)
        if now >= self._next_flush:
            self._next_flush = now + self._config.seen_flush_interval_s
            await self.flush_seen()
