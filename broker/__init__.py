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

`Connections` keeps a record of each connection in the store (PENDING at OpenConnection, OPEN at
the agent's SYN-ACK, DETACHED when a shell's client leaves, CLOSED at the end), served by
ListConnections and CloseConnection. `Revocations` has the policy role sign revocations, pushes
them to the agents on their control streams, and re-sends those in force after each Welcome.
`UserLocks` serves LockUser and UnlockUser: the auth role's lock, then a revocation of all the
user's grants.

`RecordingIntake` checks each signed recording chunk an agent sends on its control stream (the
hash chain under the agent's registered key, resumed from the store after a restart) and hands
what verified to the audit role (`audit.Recordings`), which stores it unchanged.
"""

from __future__ import annotations

from ._client import BrokerServicer, PendingChannels
from ._config import BrokerConfig, load_or_create_broker_id
from ._connected import AgentStream, ConnectedAgents
from ._connection_store import ConnectionRecord, ConnectionState, ConnectionStore
from ._connections import Connections
from ._control import ACCESS
from ._directory import TargetDirectory
from ._locks import LockOutcome, UserLocks
from ._migrations import MIGRATIONS
from ._recordings import RecordingIntake, UserResolver, recording_owner
from ._relay import ChannelRelay, RelayedChannel
from ._revocations import Revocations
from ._role import SERVER_OPTIONS, BrokerRole, server_options

__all__ = [
    "ACCESS",
    "MIGRATIONS",
    "SERVER_OPTIONS",
    "AgentStream",
    "BrokerConfig",
    "BrokerRole",
    "BrokerServicer",
    "ChannelRelay",
    "ConnectedAgents",
    "ConnectionRecord",
    "ConnectionState",
    "ConnectionStore",
    "Connections",
    "LockOutcome",
    "PendingChannels",
    "RecordingIntake",
    "RelayedChannel",
    "Revocations",
    "TargetDirectory",
    "UserLocks",
    "UserResolver",
    "load_or_create_broker_id",
    "recording_owner",
    "server_options",
]
