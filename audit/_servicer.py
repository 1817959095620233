"""The gRPC face of the audit role: converts messages and calls the audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Never

import grpc.aio

from auth import Access
from bastion.audit.v1 import audit_service_pb2 as pb
from bastion.audit.v1 import audit_service_pb2_grpc as pb_grpc
from mrzap.errors import MrzapError, Unimplemented
from mrzap.timestamps import from_timestamp

from ._log import AuditLog
from ._store import EventQuery

__all__ = ["ACCESS", "AuditServicer", "event_query"]

_SERVICE = "/bastion.audit.v1.AuditService/"

#: Who may call each method of AuditService.
ACCESS: dict[str, Access] = {
    _SERVICE + "ListEvents": Access.ADMIN,
    _SERVICE + "ExportEvents": Access.ADMIN,
    _SERVICE + "ListRecordings": Access.ADMIN,
    _SERVICE + "ListRecordingChunks": Access.ADMIN,
    _SERVICE + "WatchRecording": Access.ADMIN,
}

_Context = grpc.aio.ServicerContext[Any, Any]
_NO_EXPORT = "exporting the audit log is not available in this version of mrzap: use ListEvents"
_NO_RECORDINGS = "session recordings are not available in this version of mrzap"


def event_query(search: pb.EventFilter) -> EventQuery:
    """The domain form of an event filter."""
    return EventQuery(
        kinds=frozenset(search.kinds),
        outcomes=frozenset(search.outcomes),
        start=from_timestamp(search.start_time) if search.HasField("start_time") else None,
        end=from_timestamp(search.end_time) if search.HasField("end_time") else None,
        user_id=search.user_id,
        target_id=search.target_id,
        connection_id=search.connection_id,
        text=search.text,
    )


class _FailingStream(AsyncIterator[Never]):
    """A response stream that ends the call with `error` before its first message."""

    def __init__(self, error: MrzapError) -> None:
        self._error = error

    async def __anext__(self) -> Never:
        raise self._error


class AuditServicer(pb_grpc.AuditServiceServicer):
    """AuditService over gRPC."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: _Context
    ) -> pb.ListEventsResponse:
        """A page of the event log, newest first (administrators only)."""
        events, next_token = await self._log.list_events(
            event_query(request.filter), request.page_size, request.page_token
        )
        return pb.ListEventsResponse(events=events, next_page_token=next_token)

    def ExportEvents(
        self, request: pb.ExportEventsRequest, context: _Context
    ) -> AsyncIterator[pb.ExportEventsResponse]:
        """Not offered yet: export comes with the audit search of a later version."""
        return _FailingStream(Unimplemented(_NO_EXPORT))

    async def ListRecordings(
        self, request: pb.ListRecordingsRequest, context: _Context
    ) -> pb.ListRecordingsResponse:
        """Not offered yet: recordings come with recorded shells."""
        raise Unimplemented(_NO_RECORDINGS)

    async def ListRecordingChunks(
        self, request: pb.ListRecordingChunksRequest, context: _Context
    ) -> pb.ListRecordingChunksResponse:
        """Not offered yet: recordings come with recorded shells."""
        raise Unimplemented(_NO_RECORDINGS)

    def WatchRecording(
        self, request: pb.WatchRecordingRequest, context: _Context
    ) -> AsyncIterator[pb.WatchRecordingResponse]:
        """Not offered yet: recordings come with recorded shells."""
        return _FailingStream(Unimplemented(_NO_RECORDINGS))
