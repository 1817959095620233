"""The gRPC face of the audit role: converts messages, decides visibility, calls the domain.

Every method is open to users (the interceptor authenticates them); what they get is decided
here: administrators see the whole organisation's events and recordings; anyone else sees only
the events they caused about connections, decisions and commands, and the recordings of their
own sessions (matched by the IdP subject in the recording's signed header). A recording someone
may not see answers NotFound, exactly like one that does not exist, so its id reveals nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc.aio
from google.protobuf.message import DecodeError

from auth import Access, Caller, current_caller
from bastion.audit.v1 import audit_service_pb2 as pb
from bastion.audit.v1 import audit_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.errors import InvalidArgument, NotFound, PermissionDenied, Unimplemented
from mrzap.paging import (
    decode_page_token,
    decode_time_token,
    encode_page_token,
    encode_time_token,
    page_limit,
)
from mrzap.timestamps import from_timestamp, to_timestamp

from ._log import AuditLog
from ._recording_store import RecordingQuery, RecordingRecord
from ._recordings import Recordings, RecordingState
from ._store import EventQuery

__all__ = ["ACCESS", "WATCH_POLL_S", "AuditServicer", "event_query"]

_SERVICE = "/bastion.audit.v1.AuditService/"

#: Who may call each method of AuditService; the servicer narrows what non-administrators see.
ACCESS: dict[str, Access] = {
    _SERVICE + "ListEvents": Access.USER,
    _SERVICE + "ExportEvents": Access.USER,
    _SERVICE + "ListRecordings": Access.USER,
    _SERVICE + "ListRecordingChunks": Access.USER,
    _SERVICE + "WatchRecording": Access.USER,
}

#: How often a watcher looks at the store for chunks another process stored.
WATCH_POLL_S = 0.2

#: The event kinds a non-administrator may read (about their own connections).
_OWN_KINDS = frozenset(
    {pb.EVENT_KIND_CONNECTION, pb.EVENT_KIND_POLICY_DECISION, pb.EVENT_KIND_COMMAND}
)
_DEFAULT_RECORDINGS, _MAX_RECORDINGS = 50, 500
_DEFAULT_CHUNKS, _MAX_CHUNKS = 100, 1000
#: A page of chunks stays well under gRPC's default 4 MiB receive limit of clients.
_MAX_PAGE_BYTES = 2 * 1024 * 1024
_WATCH_BATCH = 64
_NO_RECORDINGS = "session recordings are not served by this process"
_API_KEY = "only administrators' API keys may read the audit log and recordings"

_Context = grpc.aio.ServicerContext[Any, Any]


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


def _visible_events(search: pb.EventFilter, caller: Caller) -> EventQuery | None:
    """What of `search` the caller may see; None when that is nothing at all."""
    query = event_query(search)
    if caller.is_admin:
        return query
    if not caller.user_id:
        raise PermissionDenied(_API_KEY)
    if query.user_id and query.user_id != caller.user_id:
        raise PermissionDenied("only administrators may read other users' events")
    kinds = query.kinds & _OWN_KINDS if query.kinds else _OWN_KINDS
    if not kinds:
        return None
    return dataclasses.replace(query, user_id=caller.user_id, kinds=kinds)


def _owner(caller: Caller) -> tuple[str, str] | None:
    """None for administrators (they see all); else the (issuer, subject) the caller is."""
    if caller.is_admin:
        return None
    user = caller.user
    if user is None:
        raise PermissionDenied(_API_KEY)
    return user.issuer, user.subject


def recording_message(record: RecordingRecord) -> pb.Recording:
    """The wire form of a stored recording."""
    return pb.Recording(
        connection_id=record.connection_id,
        target_id=record.target_id,
        user_id=record.user_id,
        subject=mrzap_pb2.Subject(iss=record.issuer, sub=record.subject, email=record.email),
        target_user=record.target_user,
        input_recorded=record.input_recorded,
        state=pb.RecordingState.ValueType(record.state),
        start_time=to_timestamp(record.start_time),
        end_time=to_timestamp(record.end_time),
        chunk_count=record.chunk_count,
        agent_public_key=record.agent_public_key,
    )


def _is_final(raw: bytes) -> bool:
    try:
        payload = mrzap_pb2.Signed.FromString(raw).payload
        return mrzap_pb2.RecordingChunk.FromString(payload).final
    except DecodeError:  # stored only after verifying, so this cannot happen; never loop on it
        return True


class AuditServicer(pb_grpc.AuditServiceServicer):
    """AuditService over gRPC."""

    def __init__(
        self,
        log: AuditLog,
        recordings: Recordings | None = None,
        *,
        caller: Callable[[], Caller] = current_caller,
    ) -> None:
        """Without `recordings`, the recording methods answer UNIMPLEMENTED. `caller` says who
        calls (the interceptor's, unless a test says otherwise)."""
        self._log = log
        self._recordings = recordings
        self._caller = caller

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: _Context
    ) -> pb.ListEventsResponse:
        """A page of the event log the caller may see, newest first."""
        query = _visible_events(request.filter, self._caller())
        if query is None:
            return pb.ListEventsResponse()
        events, next_token = await self._log.list_events(
            query, request.page_size, request.page_token
        )
        return pb.ListEventsResponse(events=events, next_page_token=next_token)

    async def ExportEvents(
        self, request: pb.ExportEventsRequest, context: _Context
    ) -> AsyncIterator[pb.ExportEventsResponse]:
        """Every event the caller may see that matches the filter, oldest first."""
        query = _visible_events(request.filter, self._caller())
        if query is None:
            return
        async for event in self._log.export_events(query):
            yield pb.ExportEventsResponse(event=event)

    async def ListRecordings(
        self, request: pb.ListRecordingsRequest, context: _Context
    ) -> pb.ListRecordingsResponse:
        """A page of the recordings the caller may see, newest first."""
        recordings = self._served()
        caller = self._caller()
        owner = _owner(caller)
        if owner is not None and request.user_id and request.user_id != caller.user_id:
            raise PermissionDenied("only administrators may list other users' recordings")
        limit = page_limit(request.page_size, _DEFAULT_RECORDINGS, _MAX_RECORDINGS)
        query = RecordingQuery(
            target_id=request.target_id,
            # A user's own recordings are matched by their IdP subject, which the signed header
            # always names, even when the service could not tell the recording's user id.
            user_id=request.user_id if owner is None else "",
            states=frozenset(request.states),
            owner=owner,
        )
        found = await recordings.store.search(
            query, decode_time_token(request.page_token), limit + 1
        )
        page = found[:limit]
        next_token = ""
        if len(found) > limit:
            next_token = encode_time_token(page[-1].start_time, page[-1].connection_id)
        return pb.ListRecordingsResponse(
            recordings=[recording_message(r) for r in page], next_page_token=next_token
        )

    async def ListRecordingChunks(
        self, request: pb.ListRecordingChunksRequest, context: _Context
    ) -> pb.ListRecordingChunksResponse:
        """A page of one recording's exact signed chunks, in chain order, with its metadata."""
        recordings = self._served()
        record = await self._visible(recordings, request.connection_id)
        limit = page_limit(request.page_size, _DEFAULT_CHUNKS, _MAX_CHUNKS)
        start = _chunk_cursor(request.page_token)
        chunks: list[bytes] = []
        size = 0
        for raw in await recordings.store.chunks(record.connection_id, start, limit):
            if chunks and size + len(raw) > _MAX_PAGE_BYTES:
                break
            chunks.append(raw)
            size += len(raw)
        following = start + len(chunks)
        next_token = str(following) if following < record.chunk_count else ""
        if next_token:
            next_token = encode_page_token(("chunk", next_token))
        return pb.ListRecordingChunksResponse(
            recording=recording_message(record), chunks=chunks, next_page_token=next_token
        )

    async def WatchRecording(
        self, request: pb.WatchRecordingRequest, context: _Context
    ) -> AsyncIterator[pb.WatchRecordingResponse]:
        """The recording's metadata, then its chunks from `start_seq`: stored ones, then live
        ones as they arrive; ends after the final chunk or when the recording becomes
        INCOMPLETE."""
        recordings = self._served()
        record = await self._visible(recordings, request.connection_id)
        yield pb.WatchRecordingResponse(recording=recording_message(record))
        next_seq = request.start_seq
        connection_id = record.connection_id
        while True:
            batch = await recordings.store.chunks(connection_id, next_seq, _WATCH_BATCH)
            for raw in batch:
                yield pb.WatchRecordingResponse(chunk=raw)
                next_seq += 1
                if _is_final(raw):
                    return
            if len(batch) == _WATCH_BATCH:
                continue
            current = await recordings.get(connection_id)
            if current is None:
                return  # purged while watched
            if current.state != RecordingState.LIVE and next_seq >= current.chunk_count:
                return
            await recordings.wait(connection_id, WATCH_POLL_S)

    def _served(self) -> Recordings:
        if self._recordings is None:
            raise Unimplemented(_NO_RECORDINGS)
        return self._recordings

    async def _visible(self, recordings: Recordings, connection_id: str) -> RecordingRecord:
        owner = _owner(self._caller())
        if not connection_id:
            raise InvalidArgument("connection_id is required")
        record = await recordings.get(connection_id)
        if record is None or (owner is not None and (record.issuer, record.subject) != owner):
            raise NotFound(f"no recording of connection {connection_id!r} that you may see")
        return record


def _chunk_cursor(token: str) -> int:
    cursor = decode_page_token(token)
    if cursor is None:
        return 0
    if cursor[0] != "chunk" or not cursor[1].isdigit():
        raise InvalidArgument("the page token is not valid")
    return int(cursor[1])
