"""The policy role: typed policies compiled to Rego data, decisions with reasons, and grant signing.

Every RPC and every connection request is decided here; an allowed connection gets a grant signed
with the organisation's service grant key (PROTOCOL.md section 4), which only this role holds.

Data flow:
- Administrators write typed policies (and custom Rego) through `PolicyServicer`; each is
  validated on the engine, stored as a new version by `PolicyStore`, audited, and the
  `PolicyDecider` reloads (other processes notice the store's revision change).
- `AuthorizationInterceptor` runs before every RPC of every role: it classifies the method,
  authenticates the caller (auth's `SessionInterceptor`), asks the decider about the `ApiCall`,
  and records one audit event, allowed or denied, with the decision id and reasons.
- Connection requests go through a `GrantIssuer`: `LocalGrantIssuer` decides the `TargetAccess`
  (the target's environment from the registry) and signs a grant only if allowed;
  `RemoteGrantIssuer` is the broker's side when the roles run apart, authenticated with the
  `ServiceCredential`, so the broker never holds a grant key.
- `AccessRequests` handles just-in-time access: requests, approvals by the policy's approvers,
  and access that ends by itself.

`GrantKeyring` holds the grant keys: loaded from the data directory (the first one is created on
first start), the newest one signing; the registry hands their public halves (`GrantKey`) to
agents at registration, and agents accept grants signed by no other key.
"""

from __future__ import annotations

from ._access_request_store import AccessRequest, AccessRequestState, AccessRequestStore
from ._access_requests import AccessRequests
from ._audit_events import change_event, policy_change_event
from ._authorize import AuthorizationInterceptor, principal_of
from ._decider import PolicyDecider
from ._engine import PolicyEngine, engine_from_spec
from ._grant_keys import GrantKey, GrantKeyring
from ._grants import GrantIssuer, IssuedGrant, LocalGrantIssuer, RemoteGrantIssuer
from ._migrations import MIGRATIONS
from ._model import (
    Decision,
    Effect,
    Principal,
    Reason,
    SubjectSelector,
    TargetConnectRules,
    TargetSelector,
    Verb,
)
from ._service_credential import ServiceCredential
from ._servicer import ACCESS, PolicyServicer, UserLookup
from ._store import PolicyStore

__all__ = [
    "ACCESS",
    "MIGRATIONS",
    "AccessRequest",
    "AccessRequestState",
    "AccessRequestStore",
    "AccessRequests",
    "AuthorizationInterceptor",
    "Decision",
    "Effect",
    "GrantIssuer",
    "GrantKey",
    "GrantKeyring",
    "IssuedGrant",
    "LocalGrantIssuer",
    "PolicyDecider",
    "PolicyEngine",
    "PolicyServicer",
    "PolicyStore",
    "Principal",
    "Reason",
    "RemoteGrantIssuer",
    "ServiceCredential",
    "SubjectSelector",
    "TargetConnectRules",
    "TargetSelector",
    "UserLookup",
    "Verb",
    "change_event",
    "engine_from_spec",
    "policy_change_event",
    "principal_of",
]
