"""A small real gRPC AuditService (plus the registry and auth calls zli resolves names with) on
loopback, serving recordings and events a test sets, for `zli recording` and `zli logs`.

It is a fake at one boundary only: the real audit role is tested in tests/audit and end to end in
tests/e2e/test_recordings.py. zli talks to it over a real gRPC channel, so streams, paging,
metadata and status codes go through grpc as they do against mrzapd. It serves on its own event
loop in a thread because zli's commands are synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.audit.v1 import audit_service_pb2_grpc as audit_grpc
from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.auth.v1 import auth_service_pb2_grpc as auth_grpc
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from bastion.registry.v1 import registry_service_pb2_grpc as registry_grpc
from zli._client import ApiKeyClient

API_KEY = "mzk_test-key"
_Context = grpc.aio.ServicerContext[Any, Any]


@dataclasses.dataclass
class AuditData:
    """What the fake serves, and every request it was sent (by method name)."""

    recordings: dict[str, tuple[audit_pb.Recording, list[bytes]]] = dataclasses.field(
        default_factory=dict
    )
    events: list[audit_pb.AuditEvent] = dataclasses.field(default_factory=list)
    targets: list[registry_pb.Target] = dataclasses.field(default_factory=list)
    users: list[auth_pb.User] = dataclasses.field(default_factory=list)
    me: auth_pb.User = dataclasses.field(default_factory=auth_pb.User)
    admin: bool = True
    """False: listing users is refused and targets are hidden, as the service does for a user
    no policy lets reach them."""
    page_size: int = 2
    """Small, so commands are seen to read every page."""
    requests: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    tokens: list[str] = dataclasses.field(default_factory=list)
    """The authorization metadata of every call."""

    def sent(self, method: str) -> list[Any]:
        """The requests of every call to `method`, in order."""
        return [request for name, request in self.requests if name == method]


def _page(items: list[Any], token: str, size: int) -> tuple[list[Any], str]:
    start = int(token or 0)
    end = start + size
    return items[start:end], str(end) if end < len(items) else ""


class _Audit(audit_grpc.AuditServiceServicer):
    def __init__(self, data: AuditData) -> None:
        self.data = data

    async def _note(self, name: str, request: Any, context: _Context) -> None:  # noqa: ANN401
        self.data.requests.append((name, request))
        auth = dict(context.invocation_metadata() or ()).get("authorization", "")
        self.data.tokens.append(str(auth))
        if auth != f"Bearer {API_KEY}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no credentials")

    def _find(self, connection_id: str) -> tuple[audit_pb.Recording, list[bytes]] | None:
        return self.data.recordings.get(connection_id)

    async def ListEvents(
        self, request: audit_pb.ListEventsRequest, context: _Context
    ) -> audit_pb.ListEventsResponse:
        await self._note("ListEvents", request, context)
        events, token = _page(self.data.events, request.page_token, self.data.page_size)
        return audit_pb.ListEventsResponse(events=events, next_page_token=token)

    async def ExportEvents(
        self, request: audit_pb.ExportEventsRequest, context: _Context
    ) -> AsyncIterator[audit_pb.ExportEventsResponse]:
        await self._note("ExportEvents", request, context)
        for event in reversed(self.data.events):  # the export is oldest first
            yield audit_pb.ExportEventsResponse(event=event)

    async def ListRecordings(
        self, request: audit_pb.ListRecordingsRequest, context: _Context
    ) -> audit_pb.ListRecordingsResponse:
        await self._note("ListRecordings", request, context)
        every = [recording for recording, _ in self.data.recordings.values()]
        found, token = _page(every, request.page_token, self.data.page_size)
        return audit_pb.ListRecordingsResponse(recordings=found, next_page_token=token)

    async def ListRecordingChunks(
        self, request: audit_pb.ListRecordingChunksRequest, context: _Context
    ) -> audit_pb.ListRecordingChunksResponse:
        await self._note("ListRecordingChunks", request, context)
        found = self._find(request.connection_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such recording")
        chunks, token = _page(found[1], request.page_token, self.data.page_size)
        return audit_pb.ListRecordingChunksResponse(
            recording=found[0], chunks=chunks, next_page_token=token
        )

    async def WatchRecording(
        self, request: audit_pb.WatchRecordingRequest, context: _Context
    ) -> AsyncIterator[audit_pb.WatchRecordingResponse]:
        await self._note("WatchRecording", request, context)
        found = self._find(request.connection_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such recording")
        yield audit_pb.WatchRecordingResponse(recording=found[0])
        for chunk in found[1][request.start_seq :]:
            await asyncio.sleep(0)  # one message at a time, as live chunks come
            yield audit_pb.WatchRecordingResponse(chunk=chunk)


class _Registry(registry_grpc.RegistryServiceServicer):
    def __init__(self, data: AuditData) -> None:
        self.data = data

    async def ListTargets(
        self, request: registry_pb.ListTargetsRequest, context: _Context
    ) -> registry_pb.ListTargetsResponse:
        visible = self.data.targets if self.data.admin else []
        found = [t for t in visible if not request.name or t.name == request.name]
        return registry_pb.ListTargetsResponse(targets=found)

    async def GetTarget(
        self, request: registry_pb.GetTargetRequest, context: _Context
    ) -> registry_pb.GetTargetResponse:
        found = [target for target in self.data.targets if target.id == request.target_id]
        if not found or not self.data.admin:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such target")
        return registry_pb.GetTargetResponse(target=found[0])


class _Auth(auth_grpc.AuthServiceServicer):
    def __init__(self, data: AuditData) -> None:
        self.data = data

    async def WhoAmI(
        self, request: auth_pb.WhoAmIRequest, context: _Context
    ) -> auth_pb.WhoAmIResponse:
        return auth_pb.WhoAmIResponse(user=self.data.me)

    async def ListUsers(
        self, request: auth_pb.ListUsersRequest, context: _Context
    ) -> auth_pb.ListUsersResponse:
        if not self.data.admin:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "administrators only")
        users, token = _page(self.data.users, request.page_token, self.data.page_size)
        return auth_pb.ListUsersResponse(users=users, next_page_token=token)


@dataclasses.dataclass
class RunningServer:
    """The fake on 127.0.0.1:`port`, serving `data`."""

    data: AuditData
    port: int


@contextlib.contextmanager
def zli_calls(running: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make zli's commands call the fake with its API key (over plain gRPC on loopback)."""
    address = f"127.0.0.1:{running.port}"
    channel = grpc.insecure_channel(address)
    service = ApiKeyClient(channel, API_KEY, address, "")

    def connect(*_: object) -> ApiKeyClient:
        return service

    monkeypatch.setattr("zli._context.connect", connect)
    try:
        yield
    finally:
        channel.close()


def serve(data: AuditData) -> Iterator[RunningServer]:
    """Run the fake until the generator is closed (use it as a pytest fixture body)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None
    port = 0

    async def main() -> None:
        nonlocal stop, port
        server = grpc.aio.server()
        audit_grpc.add_AuditServiceServicer_to_server(_Audit(data), server)
        # Only the calls zli resolves names with; the generated bases declare the rest abstract.
        registry_grpc.add_RegistryServiceServicer_to_server(_Registry(data), server)  # type: ignore[abstract]
        auth_grpc.add_AuthServiceServicer_to_server(_Auth(data), server)  # type: ignore[abstract]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        ready.set()
        await stop.wait()
        await server.stop(grace=None)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the fake audit server did not start"
    try:
        yield RunningServer(data, port)
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
