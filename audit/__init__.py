"""The audit role: the event log every other role writes to, and its search.

Flow: a role that changes something (the registry's target lifecycle, refused registrations and
agents; later connections, policy decisions and API calls) calls `AuditLog.record` with a
`bastion.audit.v1.AuditEvent`, in the same database transaction as the change it records.
`AuditLog` fills the event's id and time, keeps it whole beside the columns it is searched by, and
lists events newest first for `ListEvents`.

Servicer -> `AuditLog` -> `AuditStore` (the `audit_events` table, owned by this role).

Session recordings (PROTOCOL.md section 8): the broker verifies each signed chunk an agent sends
and hands it to `Recordings.append`, which stores it unchanged and compressed
(`RecordingStore`, tables `audit_recordings` and `audit_recording_chunks`) with a COMMAND event
for each command it carries; `RecordingPurger` deletes recordings past the retention period; the
servicer lists, pages and streams them live to their owners and to administrators.
"""

from __future__ import annotations

from ._log import Actor, AuditLog, Outcome
from ._migrations import MIGRATIONS
from ._recording_store import RecordingQuery, RecordingRecord, RecordingStore
from ._recordings import AuditConfig, RecordingPurger, Recordings, RecordingState
from ._servicer import ACCESS, AuditServicer
from ._store import AuditStore, EventQuery

__all__ = [
    "ACCESS",
    "MIGRATIONS",
    "Actor",
    "AuditConfig",
    "AuditLog",
    "AuditServicer",
    "AuditStore",
    "EventQuery",
    "Outcome",
    "RecordingPurger",
    "RecordingQuery",
    "RecordingRecord",
    "RecordingState",
    "RecordingStore",
    "Recordings",
]
