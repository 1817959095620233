"""The broker role: agents' control streams, and the relay between clients and agents.

Agents dial out and hold one control stream each (PROTOCOL.md section 7). `BrokerRole` serves
`AgentService.Control`: it authenticates the agent against the key the registry holds (through
the `TargetDirectory` protocol, which `registry.Registry` implements), keeps the stream in
`ConnectedAgents` for routing, runs one timer for keepalives and dead streams, and reports
connections, disconnections, refusals and batched keepalives back to the directory. The broker
relays SYN, SYN-ACK and encrypted frames it can neither read nor alter (sections 5-6):
`BrokerServicer` serves the client's OpenConnection (a decision and a grant from the policy
role's `GrantIssuer`) and Channel, and `ChannelRelay` joins each client channel to its agent's
control stream by channel id, with bounded queues.
"""

from __future__ import annotations

from ._client import BrokerServicer, PendingChannels
from ._config import BrokerConfig, load_or_create_broker_id
from ._connected import AgentStream, ConnectedAgents
from ._control import ACCESS
from ._directory import TargetDirectory
from ._relay import ChannelRelay, RelayedChannel
from ._role import SERVER_OPTIONS, BrokerRole

__all__ = [
    "ACCESS",
    "SERVER_OPTIONS",
    "AgentStream",
    "BrokerConfig",
    "BrokerRole",
    "BrokerServicer",
    "ChannelRelay",
    "ConnectedAgents",
    "PendingChannels",
    "RelayedChannel",
    "TargetDirectory",
    "load_or_create_broker_id",
]
