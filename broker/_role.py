"""The broker role as `mrzapd` runs it: the control-stream servicer, its table and its timer."""

from __future__ import annotations

from collections.abc import Callable

import grpc.aio

from mrzap.clock import Clock, SystemClock

from ._config import BrokerConfig
from ._connected import AgentStream, ConnectedAgents
from ._control import AgentServicer, add_agent_servicer
from ._directory import TargetDirectory
from ._housekeeping import Housekeeper
from ._recordings import RecordingIntake
from ._relay import ChannelRelay

__all__ = ["SERVER_OPTIONS", "BrokerRole", "server_options"]


def server_options(
    keepalive_time_ms: int = 30_000, keepalive_timeout_ms: int = 20_000
) -> tuple[tuple[str, int], ...]:
    """gRPC server options the broker needs.

    No message larger than 1 MiB is read into memory at all (the control stream's own, smaller
    limit answers with ControlClose); each agent holds one connection with one stream, so a
    connection needs few concurrent streams.

    The server pings each connection with calls open once it has been quiet for
    `keepalive_time_ms` and drops it, with every call on it, when the answer takes longer than
    `keepalive_timeout_ms`. A peer that vanished without closing its connection (a laptop that
    went to sleep, a NAT that forgot the mapping) would otherwise hold its calls open until TCP
    gives up, which for an idle shell's channel is never: the shell would stay attached to nobody.
    Pings go however long no data was sent (`max_pings_without_data` 0), or an idle channel would
    stop being checked after two. grpcio 1.85 times a keepalive ping out by the HTTP/2 ping
    timeout (a minute by default), not by `keepalive_timeout_ms`, so both are set.
    """
    return (
        ("grpc.max_receive_message_length", 1024 * 1024),
        ("grpc.max_concurrent_streams", 100),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.http2.ping_timeout_ms", keepalive_timeout_ms),
        ("grpc.http2.max_pings_without_data", 0),
    )


#: The options `mrzapd` serves with.
SERVER_OPTIONS = server_options()


class BrokerRole:
    """Holds agents' control streams for one broker process."""

    def __init__(
        self,
        config: BrokerConfig,
        directory: TargetDirectory,
        clock: Clock | None = None,
        *,
        agents: ConnectedAgents | None = None,
        on_welcome: Callable[[AgentStream], None] | None = None,
        recordings: RecordingIntake | None = None,
    ) -> None:
        """`recordings` verifies and stores agents' recording chunks (None drops them)."""
        clock = clock or SystemClock()
        self.config = config
        """The broker's settings."""
        self.agents = ConnectedAgents() if agents is None else agents
        """The agents connected to this broker."""
        self.housekeeper = Housekeeper(config, self.agents, directory, clock)
        """The periodic task: keepalives, dead streams, last-seen batches."""
        self.relay = ChannelRelay(self.agents, config.max_channel_queue_bytes)
        """The channels relayed between clients and this broker's agents."""
        self.servicer = AgentServicer(
            config,
            directory,
            self.agents,
            self.housekeeper,
            clock,
            self.relay,
            on_welcome,
            recordings,
        )
        """The AgentService servicer."""

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve AgentService on `server`."""
        add_agent_servicer(self.servicer, server, self.config.max_message_bytes)

    def start(self) -> None:
        """Start the periodic task; call from the running event loop."""
        self.housekeeper.start()

    async def shutdown(self) -> None:
        """Tell every agent the broker is going away, then stop the periodic task.

        Call before stopping the gRPC server: each stream sends its ControlClose{SHUTDOWN} and
        ends within the server's grace period, and agents reconnect with their back-off. The
        registry is not told of these ends (see `AgentStream.drain`); keepalives heard so far are
        written.
        """
        for stream in self.agents:
            stream.drain()
        await self.housekeeper.stop()
