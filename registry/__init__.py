"""The registry role: the organisation, environments, registration keys, and targets' lifecycle.

Flow (DESIGN.md section 3, flow 3): an administrator makes a registration key (its secret shown
once, only its hash kept). A machine presents it to `CreateActivationToken` and gets a
single-use, short-lived activation token and a target in ACTIVATION; the agent spends the token in
`RegisterAgent` with its public key and learns its target id, the organisation id, the grant keys
and the IdP configuration to pin (REGISTERED). The broker's control stream then reports the agent
through the `TargetDirectory` methods of `Registry` (ONLINE, keepalives, OFFLINE, refusals), and
`Registry.sweep`, run every few seconds by `Sweeper`, applies the time-based transitions
(OFFLINE, TERMINATED). Every transition is in the target's state history and, with every refusal,
in the audit log.

Targets are listed to every logged-in caller, narrowed for non-administrators to those a target
connect policy could let them reach (`TargetVisibility`, reading the policy role's policies).

Servicer -> `Registry` (domain) -> `RegistryStore` (SQL tables owned by this role, `registry_*`).
"""

from __future__ import annotations

from ._config import RegistryConfig
from ._domain import (
    DEFAULT_ENVIRONMENT,
    AgentRegistration,
    IssuedToken,
    NewSecret,
    Registered,
    Registry,
    SweepResult,
)
from ._migrations import MIGRATIONS
from ._servicer import ACCESS, RegistryServicer
from ._store import (
    Environment,
    RegistrationKey,
    RegistryStore,
    StateChange,
    Target,
    TargetFilter,
    TargetScope,
    TargetState,
)
from ._sweeper import Sweeper
from ._visibility import TargetVisibility

__all__ = [
    "ACCESS",
    "DEFAULT_ENVIRONMENT",
    "MIGRATIONS",
    "AgentRegistration",
    "Environment",
    "IssuedToken",
    "NewSecret",
    "Registered",
    "RegistrationKey",
    "Registry",
    "RegistryConfig",
    "RegistryServicer",
    "RegistryStore",
    "StateChange",
    "SweepResult",
    "Sweeper",
    "Target",
    "TargetFilter",
    "TargetScope",
    "TargetState",
    "TargetVisibility",
]
