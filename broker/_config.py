"""The broker's settings, and the stable identity of a broker process."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from mrzap.errors import InvalidArgument

__all__ = ["BrokerConfig", "load_or_create_broker_id"]


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    """How the broker runs agents' control streams (PROTOCOL.md section 7)."""

    broker_id: str
    """This broker's identifier; the registry routes targets to it."""

    region: str = ""
    """The region the broker serves; targets connected to it are pinned to it."""

    keepalive_interval_s: float = 20.0
    """How often each side of an idle stream sends a keepalive (told to agents in Welcome)."""

    silence_intervals: int = 3
    """A stream silent for this many keepalive intervals is dead and ended."""

    seen_flush_interval_s: float = 5.0
    """How often the keepalives heard are written to the registry, in one statement."""

    auth_timeout_s: float = 30.0
    """How long an agent has to answer the challenge (generous: under a reconnection storm both
    sides are slow, and a refusal costs more than waiting)."""

    max_clock_skew_s: float = 120.0
    """The most an AgentAuth timestamp may differ from the broker's clock."""

    max_message_bytes: int = 256 * 1024
    """The largest control-stream message an agent may send; a larger one ends the stream."""

    max_channel_queue_bytes: int = 1024 * 1024
    """Per channel and direction, the most frame bytes the relay queues: four times the
    end-to-end window of PROTOCOL.md section 6. An agent past it loses the channel; a client
    past it is no longer read until the agent's stream catches up."""

    max_concurrent_admissions: int = 4
    """How many agents are authenticated and recorded online (or refused) at once; the rest
    wait their turn, so a reconnection storm does not swamp the registry's database."""

    def __post_init__(self) -> None:
        if not self.broker_id:
            raise InvalidArgument("broker_id must not be empty")
        for name in (
            "keepalive_interval_s",
            "seen_flush_interval_s",
            "auth_timeout_s",
            "max_clock_skew_s",
        ):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"broker {name} must be positive")
        if self.silence_intervals < 2:
            raise InvalidArgument("broker silence_intervals must be at least 2")
        if self.max_concurrent_admissions < 1:
            raise InvalidArgument("broker max_concurrent_admissions must be at least 1")
        if self.max_channel_queue_bytes < 64 * 1024:
            raise InvalidArgument("broker max_channel_queue_bytes must be at least 64 KiB")
        if self.max_message_bytes < 1024:
            raise InvalidArgument("broker max_message_bytes must be at least 1024")

    @property
    def silence_limit_s(self) -> float:
        """How long a stream may stay silent before it is ended."""
        return self.keepalive_interval_s * self.silence_intervals


def load_or_create_broker_id(path: Path) -> str:
    """The broker id kept in `path`, created (a random UUID) on first use.

    Keeping it in the data directory means a restarted broker keeps its id, so the registry's
    routes to it stay right while its agents reconnect.
    """
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise InvalidArgument(f"{path} does not hold a broker id (a UUID)") from None
    broker_id = str(uuid.uuid4())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(broker_id + "\n")
    tmp.replace(path)
    return broker_id
