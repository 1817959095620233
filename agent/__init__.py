"""The target-side daemon `mrzap-agent`.

`register` (once) spends a registration key or activation token on `RegisterAgent`, generates the
agent's Ed25519 key and stores it with what the agent pins (grant keys, identity provider, the
service's CA) in its configuration directory. `run` keeps one outbound control stream to a broker
(PROTOCOL.md section 7) with `ControlLoop`, reconnecting with jittered back-off. `AgentChannels`
answers each SYN (checked against both roots of trust, section 5, by `SynHandler`), runs the action
through `Sessions` and relays its encrypted frames (section 6) over the control stream.
`Recorder` records shells and commands as their grants ask (section 8): signed, hash-chained
chunks with the commands typed, sent up the control stream by a `RecordingUplink` that queues
them (bounded) while the stream is down and resends the last ones after reconnecting.
"""

from __future__ import annotations

import os

# The agent forks shells and commands while gRPC's threads run. gRPC's fork support (on by
# default) installs fork handlers that crash such children at random; the agent never uses gRPC
# in a child (each one execs at once), so it is turned off -- before gRPC is first imported,
# because gRPC reads the setting then.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from ._backoff import Backoff
from ._channels import AgentChannels
from ._config import AgentConfig, AgentFiles, GrantKeyPin, default_config_dir
from ._control import READY_LINE, AgentStopped, ControlLoop
from ._recording_tap import Recorder
from ._register import RegistrationRequest, register
from ._uplink import RecordingUplink

__all__ = [
    "READY_LINE",
    "AgentChannels",
    "AgentConfig",
    "AgentFiles",
    "AgentStopped",
    "Backoff",
    "ControlLoop",
    "GrantKeyPin",
    "Recorder",
    "RecordingUplink",
    "RegistrationRequest",
    "default_config_dir",
    "register",
]
