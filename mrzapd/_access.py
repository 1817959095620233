"""The access class of every RPC of the service, merged from the roles' own classifications.

The authorization interceptor refuses any method missing here, and a test walks every RPC of
the contract's services to prove none is missing (and none here is misspelt).
"""

from __future__ import annotations

from audit import ACCESS as AUDIT_ACCESS
from auth import Access
from auth._servicer import ACCESS as AUTH_ACCESS
from broker import ACCESS as AGENT_ACCESS
from policy import ACCESS as POLICY_ACCESS
from registry import ACCESS as REGISTRY_ACCESS

__all__ = ["ACCESS"]

_BROKER = "/bastion.broker.v1.BrokerService/"

#: The broker's client RPCs (`broker.BrokerServicer`). Locking and unlocking users is for
#: administrators; the servicer still checks the caller's own rights within USER methods.
BROKER_CLIENT_ACCESS: dict[str, Access] = {
    _BROKER + "OpenConnection": Access.USER,
    _BROKER + "Channel": Access.USER,
    _BROKER + "ListConnections": Access.USER,
    _BROKER + "CloseConnection": Access.USER,
    _BROKER + "LockUser": Access.ADMIN,
    _BROKER + "UnlockUser": Access.ADMIN,
}

#: Who may call each method of the service.
ACCESS: dict[str, Access] = {
    **AUTH_ACCESS,
    **AUDIT_ACCESS,
    **REGISTRY_ACCESS,
    **AGENT_ACCESS,
    **POLICY_ACCESS,
    **BROKER_CLIENT_ACCESS,
}
