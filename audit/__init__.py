"""The audit role: the event log every other role writes to, and its search.

Flow: a role that changes something (the registry's target lifecycle, refused registrations and
agents; later connections, policy decisions and API calls) calls `AuditLog.record` with a
`bastion.audit.v1.AuditEvent`, in the same database transaction as the change it records.
`AuditLog` fills the event's id and time, keeps it whole beside the columns it is searched by, and
lists events newest first for `ListEvents`.

Servicer -> `AuditLog` -> `AuditStore` (the `audit_events` table, owned by this role).
"""

from __future__ import annotations

from ._log import Actor, AuditLog, Outcome
from ._migrations import MIGRATIONS
from ._servicer import ACCESS, AuditServicer
from ._store import AuditStore, EventQuery

__all__ = [
    "ACCESS",
    "MIGRATIONS",
    "Actor",
    "AuditLog",
    "AuditServicer",
    "AuditStore",
    "EventQuery",
    "Outcome",
]
