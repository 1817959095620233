"""The target-side daemon `mrzap-agent`.

`register` (once) spends a registration key or activation token on `RegisterAgent`, generates the
agent's Ed25519 key and stores it with what the agent pins (grant keys, identity provider, the
service's CA) in its configuration directory. `run` keeps one outbound control stream to a broker
(PROTOCOL.md section 7) with `ControlLoop`, reconnecting with jittered back-off. Later parts verify
every SYN against both roots of trust (section 5) and run the granted action.
"""

from __future__ import annotations

from ._backoff import Backoff
from ._config import AgentConfig, AgentFiles, GrantKeyPin, default_config_dir
from ._control import READY_LINE, AgentStopped, ControlLoop
from ._register import RegistrationRequest, register

__all__ = [
    "READY_LINE",
    "AgentConfig",
    "AgentFiles",
    "AgentStopped",
    "Backoff",
    "ControlLoop",
    "GrantKeyPin",
    "RegistrationRequest",
    "default_config_dir",
    "register",
]
