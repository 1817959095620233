"""The agents connected to this broker: target id → the handle of its control stream.

Channel routing (a later part of the broker) looks agents up here to reach them. Every handle is
small (slots, no task or timer of its own): one broker process holds tens of thousands.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from bastion.agent.v1 import agent_service_pb2 as pb

__all__ = ["AgentStream", "ConnectedAgents"]


class AgentStream:
    """One authenticated control stream; messages sent through it go out in order."""

    __slots__ = (
        "_closed",
        "_outbox",
        "address",
        "connected_at",
        "draining",
        "end_reason",
        "last_heard",
        "last_sent",
        "target_id",
    )

    def __init__(self, target_id: str, address: str, outbox: asyncio.Queue[object]) -> None:
        now = time.monotonic()
        self.target_id = target_id
        """The target the agent authenticated as."""
        self.address = address
        """The agent's network address, as gRPC reports the peer."""
        self.connected_at = now
        """When the stream was authenticated (monotonic seconds)."""
        self.last_heard = now
        """When the agent last sent anything (monotonic seconds)."""
        self.last_sent = now
        """When the broker last sent anything (monotonic seconds)."""
        self.end_reason = "the stream ended"
        """Why the stream ended, once it has; recorded with the disconnection."""
        self.draining = False
        """Ended because this broker is shutting down; not reported as a disconnection."""
        self._outbox = outbox
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether a ControlClose has been queued; nothing more can be sent."""
        return self._closed

    def send(self, message: pb.ControlResponse) -> None:
        """Queue `message` for the agent; ignored once the stream is closing."""
        if self._closed:
            return
        self._outbox.put_nowait(message)
        self.last_sent = time.monotonic()

    def close(self, reason: pb.ControlCloseReason.ValueType, message: str) -> None:
        """Send ControlClose and end the stream once everything queued before it is sent."""
        if self._closed:
            return
        self.send(pb.ControlResponse(close=pb.ControlClose(reason=reason, message=message)))
        self._closed = True
        self.end_reason = message

    def drain(self) -> None:
        """End the stream because the broker is going away; the agent reconnects elsewhere or later.

        The registry is not told: a restarting broker's agents are back within seconds, and
        writing thousands of disconnections would hold up the shutdown. Targets that do not come
        back go OFFLINE by the registry's offline timeout.
        """
        self.close(pb.CONTROL_CLOSE_REASON_SHUTDOWN, "the broker is shutting down")
        self.draining = True


class ConnectedAgents:
    """The current stream of each connected target; a newer stream replaces an older one."""

    def __init__(self) -> None:
        self._streams: dict[str, AgentStream] = {}

    def add(self, stream: AgentStream) -> AgentStream | None:
        """Make `stream` the target's current stream; returns the one it replaces, if any."""
        previous = self._streams.get(stream.target_id)
        self._streams[stream.target_id] = stream
        return previous

    def remove(self, stream: AgentStream) -> bool:
        """Forget `stream` if it is still its target's current one; says whether it was."""
        if self._streams.get(stream.target_id) is stream:
            del self._streams[stream.target_id]
            return True
        return False

    def get(self, target_id: str) -> AgentStream | None:
        """The target's current stream, or None if its agent is not connected here."""
        return self._streams.get(target_id)

    def __contains__(self, target_id: object) -> bool:
        return target_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[AgentStream]:
        # A snapshot: callers may close streams (which then leave the table) while iterating.
        return iter(list(self._streams.values()))
