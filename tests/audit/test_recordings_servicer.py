"""AuditService's recordings and events, and who sees what: users their own, administrators all.

The servicer is called directly with the caller the interceptor would have authenticated (the
interceptor itself, and the access classes, are covered by tests/policy and tests/registry).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from audit import (
    MIGRATIONS,
    AuditLog,
    AuditServicer,
    AuditStore,
    Recordings,
    RecordingStore,
)
from auth import Caller
from bastion.audit.v1 import audit_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from broker import RecordingIntake
from broker.testing import MemoryDirectory, user_caller
from mrzap import keys
from mrzap.errors import NotFound, PermissionDenied
from mrzap.recording import ChainSigner, recording_header, verify_recording
from mrzap.storage import Database
from mrzap.testing import FixedClock

START = 1_900_000_000.0
TARGET = "target-1"
WAIT_S = 10.0
NO_CONTEXT: Any = None

ALICE = user_caller(b"a" * 32, subject="alice-sub")
BOB = user_caller(b"b" * 32, subject="bob-sub")
ADMIN = Caller(is_admin=True, session=user_caller(b"c" * 32, subject="admin-sub").session)


@pytest_asyncio.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    db.migrate([MIGRATIONS])
    yield db
    await db.close()


class Service:
    """The audit role with an agent's recordings, served to a caller the test picks."""

    def __init__(self, database: Database) -> None:
        self.clock = FixedClock(START)
        self.key = keys.generate_signing_key()
        directory = MemoryDirectory()
        directory.add(TARGET, keys.public_key_bytes(self.key.public_key()))
        self.log = AuditLog(AuditStore(database), self.clock)
        self.recordings = Recordings(RecordingStore(database), self.log, self.clock)

        async def owner(connection_id: str, subject: mrzap_pb2.Subject) -> str:
            return f"user-{subject.sub}"  # as broker.testing.user_caller names users

        self.intake = RecordingIntake(self.recordings, directory, owner)
        self.caller = ALICE
        self.servicer = AuditServicer(self.log, self.recordings, caller=lambda: self.caller)

    def signer(self, connection_id: str, of: Caller) -> ChainSigner:
        assert of.user is not None
        grant = mrzap_pb2.Grant(
            grant_id=f"grant-{connection_id}",
            target_id=TARGET,
            target_user="root",
            subject=mrzap_pb2.Subject(iss=of.user.issuer, sub=of.user.subject, email=of.user.email),
        )
        return ChainSigner(self.key, connection_id, recording_header(grant, 80, 24, START))

    async def session(
        self, connection_id: str, of: Caller, commands: tuple[str, ...] = (), *, final: bool = True
    ) -> ChainSigner:
        """A recorded session of `of`: one chunk per command, then the final chunk."""
        signer = self.signer(connection_id, of)
        for index, command in enumerate(commands):
            raw = signer.sign_chunk(
                [mrzap_pb2.RecordingEvent(time=index, code="o", data=f"$ {command}\r\n")],
                [mrzap_pb2.CommandRecord(time=index, command=command)],
            )
            assert await self.intake.receive(TARGET, raw)
        if final:
            assert await self.intake.receive(TARGET, signer.sign_chunk(final=True))
        return signer


@pytest_asyncio.fixture
async def service(database: Database) -> Service:
    return Service(database)


async def list_ids(service: Service, **request: Any) -> list[str]:  # noqa: ANN401
    response = await service.servicer.ListRecordings(
        pb.ListRecordingsRequest(**request), NO_CONTEXT
    )
    return [recording.connection_id for recording in response.recordings]


@pytest.mark.asyncio
async def test_users_see_only_their_own_recordings(service: Service) -> None:
    await service.session("alice-1", ALICE, ("ls",))
    await service.session("bob-1", BOB, ("id",))
    service.caller = ALICE
    assert await list_ids(service) == ["alice-1"]
    with pytest.raises(PermissionDenied):
        await list_ids(service, user_id="user-bob-sub")
    for read in (
        service.servicer.ListRecordingChunks(
            pb.ListRecordingChunksRequest(connection_id="bob-1"), NO_CONTEXT
        ),
        anext(
            service.servicer.WatchRecording(
                pb.WatchRecordingRequest(connection_id="bob-1"), NO_CONTEXT
            )
        ),
    ):
        with pytest.raises(NotFound):
            await read
    service.caller = ADMIN
    assert sorted(await list_ids(service)) == ["alice-1", "bob-1"]
    assert await list_ids(service, user_id="user-bob-sub") == ["bob-1"]
    bobs = await service.servicer.ListRecordingChunks(
        pb.ListRecordingChunksRequest(connection_id="bob-1"), NO_CONTEXT
    )
    assert bobs.recording.subject.sub == "bob-sub"
    assert len(bobs.chunks) == 2


@pytest.mark.asyncio
async def test_chunks_page_in_order_and_verify_offline_with_the_key_served(
    service: Service,
) -> None:
    await service.session("alice-1", ALICE, ("one", "two", "three", "four"))
    chunks: list[bytes] = []
    token = ""
    while True:
        page = await service.servicer.ListRecordingChunks(
            pb.ListRecordingChunksRequest(connection_id="alice-1", page_size=2, page_token=token),
            NO_CONTEXT,
        )
        chunks += page.chunks
        token = page.next_page_token
        if not token:
            break
    assert page.recording.state == pb.RECORDING_STATE_COMPLETE
    assert page.recording.chunk_count == 5
    public_key = keys.public_key_from_bytes(page.recording.agent_public_key)
    recording = verify_recording(chunks, public_key, require_complete=True)
    assert [command.command for _, command in recording.commands] == [
        "one",
        "two",
        "three",
        "four",
    ]


@pytest.mark.asyncio
async def test_watching_a_live_recording_streams_new_chunks_until_the_final_one(
    service: Service,
) -> None:
    signer = await service.session("alice-1", ALICE, ("first",), final=False)
    stream = service.servicer.WatchRecording(
        pb.WatchRecordingRequest(connection_id="alice-1"), NO_CONTEXT
    )
    first = await asyncio.wait_for(anext(stream), WAIT_S)
    assert first.recording.state == pb.RECORDING_STATE_LIVE
    stored = await asyncio.wait_for(anext(stream), WAIT_S)
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # the watcher now waits for the next chunk
    later = signer.sign_chunk([mrzap_pb2.RecordingEvent(time=5, code="o", data="later")])
    assert await service.intake.receive(TARGET, later)
    assert (await asyncio.wait_for(pending, WAIT_S)).chunk == later
    final = signer.sign_chunk(final=True)
    assert await service.intake.receive(TARGET, final)
    rest = [response.chunk async for response in stream]
    assert rest == [final]
    recording = verify_recording(
        [stored.chunk, later, final], service.key.public_key(), require_complete=True
    )
    assert recording.chunk_count == 3


@pytest.mark.asyncio
async def test_users_see_their_own_commands_and_administrators_everyones(
    service: Service,
) -> None:
    await service.session("alice-1", ALICE, ("cat /etc/hostname",))
    await service.session("bob-1", BOB, ("cat /etc/shadow",))
    commands = pb.EventFilter(kinds=[pb.EVENT_KIND_COMMAND], text="cat")
    service.caller = ALICE
    mine = await service.servicer.ListEvents(pb.ListEventsRequest(filter=commands), NO_CONTEXT)
    assert [e.command.command for e in mine.events] == ["cat /etc/hostname"]
    with pytest.raises(PermissionDenied):
        await service.servicer.ListEvents(
            pb.ListEventsRequest(filter=pb.EventFilter(user_id="user-bob-sub")), NO_CONTEXT
        )
    api_calls = pb.EventFilter(kinds=[pb.EVENT_KIND_API_CALL])
    nothing = await service.servicer.ListEvents(pb.ListEventsRequest(filter=api_calls), NO_CONTEXT)
    assert list(nothing.events) == []
    service.caller = ADMIN
    everyone = await service.servicer.ListEvents(pb.ListEventsRequest(filter=commands), NO_CONTEXT)
    assert [e.command.command for e in everyone.events] == ["cat /etc/shadow", "cat /etc/hostname"]
    exported = [
        response.event.command.command
        async for response in service.servicer.ExportEvents(
            pb.ExportEventsRequest(filter=commands), NO_CONTEXT
        )
    ]
    assert exported == ["cat /etc/hostname", "cat /etc/shadow"]  # oldest first
    service.caller = BOB
    bobs = [
        response.event.command.command
        async for response in service.servicer.ExportEvents(
            pb.ExportEventsRequest(filter=commands), NO_CONTEXT
        )
    ]
    assert bobs == ["cat /etc/shadow"]
