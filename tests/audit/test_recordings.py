"""Recordings in the audit role, fed by the broker's intake: verify, store, resume, purge.

The chunks are signed by a real agent key with `mrzap.recording.ChainSigner`, exactly as the
agent signs them; the broker's `RecordingIntake` checks them against the key the (in-memory)
directory holds, and the store runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import (
    MIGRATIONS,
    AuditConfig,
    AuditLog,
    AuditStore,
    EventQuery,
    RecordingPurger,
    Recordings,
    RecordingState,
    RecordingStore,
)
from bastion.audit.v1 import audit_service_pb2 as pb
from bastion.mrzap.v1 import mrzap_pb2
from broker import RecordingIntake
from broker.testing import MemoryDirectory
from mrzap import keys
from mrzap.errors import InvalidArgument
from mrzap.recording import (
    MAX_SIGNED_CHUNK_BYTES,
    ChainSigner,
    recording_header,
    verify_recording,
)
from mrzap.storage import Database, sqlite_url
from mrzap.testing import FixedClock

START = 1_900_000_000.0
TARGET = "target-1"
SUBJECT = mrzap_pb2.Subject(iss="https://idp.test", sub="alice-sub", email="alice@example.com")


@pytest_asyncio.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    db.migrate([MIGRATIONS])
    yield db
    await db.close()


class World:
    """An agent key registered in a directory, and the audit role's recordings."""

    def __init__(self, database: Database) -> None:
        self.clock = FixedClock(START)
        self.key = keys.generate_signing_key()
        self.directory = MemoryDirectory()
        self.directory.add(TARGET, keys.public_key_bytes(self.key.public_key()))
        self.log = AuditLog(AuditStore(database), self.clock)
        self.recordings = Recordings(RecordingStore(database), self.log, self.clock)

    def intake(self) -> RecordingIntake:
        """A broker's intake (a new one is what a restarted broker has)."""

        async def owner(connection_id: str, subject: mrzap_pb2.Subject) -> str:
            return "user-alice" if subject.sub == "alice-sub" else ""

        return RecordingIntake(self.recordings, self.directory, owner)

    def signer(
        self, connection_id: str = "conn-1", *, target_id: str = TARGET, key: object = None
    ) -> ChainSigner:
        grant = mrzap_pb2.Grant(
            grant_id="grant-1", target_id=target_id, target_user="root", subject=SUBJECT
        )
        return ChainSigner(
            key or self.key,  # type: ignore[arg-type]
            connection_id,
            recording_header(grant, 80, 24, START),
        )


@pytest.fixture
def world(database: Database) -> World:
    return World(database)


def output(text: str, time: float = 0.5) -> list[mrzap_pb2.RecordingEvent]:
    return [mrzap_pb2.RecordingEvent(time=time, code="o", data=text)]


def typed(command: str, time: float = 1.0) -> list[mrzap_pb2.CommandRecord]:
    return [mrzap_pb2.CommandRecord(time=time, command=command)]


async def stored_chunks(world: World, connection_id: str = "conn-1") -> list[bytes]:
    return await world.recordings.store.chunks(connection_id, 0, 1000)


@pytest.mark.asyncio
async def test_verified_chunks_are_stored_unchanged_and_compressed(world: World) -> None:
    intake = world.intake()
    signer = world.signer()
    screen = "total 0\r\n" * 2000  # a busy terminal repeats itself: it compresses well
    sent = [
        signer.sign_chunk(output(screen, 0.1)),
        signer.sign_chunk(output("$ ", 0.2)),
    ]
    for raw in sent:
        assert await intake.receive(TARGET, raw)
    live = await world.recordings.get("conn-1")
    assert live is not None
    assert live.state == RecordingState.LIVE
    sent.append(signer.sign_chunk(final=True))
    assert await intake.receive(TARGET, sent[-1])
    assert await stored_chunks(world) == sent
    recording = await world.recordings.get("conn-1")
    assert recording is not None
    assert recording.state == RecordingState.COMPLETE
    assert recording.chunk_count == 3
    assert recording.user_id == "user-alice"
    assert (recording.issuer, recording.subject) == ("https://idp.test", "alice-sub")
    assert recording.start_time == START
    assert recording.size_bytes == sum(len(raw) for raw in sent)
    assert recording.stored_bytes < recording.size_bytes / 5
    assert recording.agent_public_key == keys.public_key_bytes(world.key.public_key())
    verified = verify_recording(await stored_chunks(world), world.key.public_key())
    assert verified.complete


@pytest.mark.asyncio
async def test_commands_become_searchable_command_events(world: World) -> None:
    intake = world.intake()
    signer = world.signer()
    assert await intake.receive(TARGET, signer.sign_chunk(commands=typed("ls -la /etc", 2.0)))
    assert await intake.receive(TARGET, signer.sign_chunk(commands=typed("sudo reboot", 3.0)))
    events, _ = await world.log.list_events(
        EventQuery(kinds=frozenset({pb.EVENT_KIND_COMMAND}), text="REBOOT")
    )
    (event,) = events
    assert event.command.command == "sudo reboot"
    assert event.command.connection_id == "conn-1"
    assert event.command.chunk_seq == 1
    assert event.command.target_user == "root"
    assert event.actor.user_id == "user-alice"
    assert event.actor.subject.email == "alice@example.com"
    assert event.time.seconds == int(START + 3.0)
    mine, _ = await world.log.list_events(EventQuery(user_id="user-alice", target_id=TARGET))
    assert [e.command.command for e in mine] == ["sudo reboot", "ls -la /etc"]


@pytest.mark.asyncio
async def test_a_chunk_signed_by_another_key_is_refused_and_the_recording_is_incomplete(
    world: World,
) -> None:
    intake = world.intake()
    signer = world.signer()
    assert await intake.receive(TARGET, signer.sign_chunk(output("real")))
    forger = world.signer(key=keys.generate_signing_key())
    forger.sign_chunk()  # seq 0, so the forged chunk is the right next seq
    forged = forger.sign_chunk(output("forged"))
    assert not await intake.receive(TARGET, forged)
    recording = await world.recordings.get("conn-1")
    assert recording is not None
    assert recording.state == RecordingState.INCOMPLETE
    denied, _ = await world.log.list_events(
        EventQuery(kinds=frozenset({pb.EVENT_KIND_TARGET}), target_id=TARGET)
    )
    (event,) = denied
    assert event.outcome == pb.EVENT_OUTCOME_DENIED
    assert "BAD_SIGNATURE" in event.target.message
    assert "forged" not in event.target.message  # the fault, never the content
    # A broken chain never becomes whole again: even the agent's own next chunk is refused.
    assert not await intake.receive(TARGET, signer.sign_chunk(output("later")))
    assert len(await stored_chunks(world)) == 1


@pytest.mark.asyncio
async def test_a_gap_in_the_chain_is_refused(world: World) -> None:
    intake = world.intake()
    signer = world.signer()
    assert await intake.receive(TARGET, signer.sign_chunk(output("one")))
    signer.sign_chunk(output("lost"))
    assert not await intake.receive(TARGET, signer.sign_chunk(output("three")))
    assert len(await stored_chunks(world)) == 1


@pytest.mark.asyncio
async def test_a_chunk_sent_again_is_skipped_and_a_different_one_refused(world: World) -> None:
    intake = world.intake()
    signer = world.signer()
    first = signer.sign_chunk(output("one"))
    second = signer.sign_chunk(output("two"))
    for raw in (first, second, first, second):  # the agent resends after a reconnection
        assert await intake.receive(TARGET, raw)
    assert await stored_chunks(world) == [first, second]
    other = world.signer()
    other.sign_chunk(output("one"))
    assert not await intake.receive(TARGET, other.sign_chunk(output("not two")))
    assert await stored_chunks(world) == [first, second]


@pytest.mark.asyncio
async def test_the_chain_resumes_across_a_broker_restart(world: World) -> None:
    signer = world.signer()
    first = signer.sign_chunk(output("before"))
    assert await world.intake().receive(TARGET, first)
    restarted = world.intake()
    assert await restarted.receive(TARGET, first)  # resent: recognised from the store
    assert await restarted.receive(TARGET, signer.sign_chunk(output("after"), final=True))
    recording = await world.recordings.get("conn-1")
    assert recording is not None
    assert recording.state == RecordingState.COMPLETE
    assert verify_recording(await stored_chunks(world), world.key.public_key()).complete


@pytest.mark.asyncio
async def test_recordings_of_a_restarted_agent_end_incomplete_and_complete_ones_stay(
    world: World,
) -> None:
    intake = world.intake()
    running, finished = world.signer("conn-1"), world.signer("conn-2")
    assert await intake.receive(TARGET, running.sign_chunk(output("half")))
    assert await intake.receive(TARGET, finished.sign_chunk(output("all"), final=True))
    await intake.abandon(["conn-1", "conn-2", "conn-never-recorded"])
    states = [await world.recordings.get(c) for c in ("conn-1", "conn-2")]
    assert [r.state if r else None for r in states] == [
        RecordingState.INCOMPLETE,
        RecordingState.COMPLETE,
    ]
    # What was recorded still verifies; nothing more is taken (the old process is gone).
    assert not verify_recording(await stored_chunks(world), world.key.public_key()).complete
    assert not await intake.receive(TARGET, running.sign_chunk(output("later")))


@pytest.mark.asyncio
async def test_chunks_the_agent_compressed_are_inflated_to_verify_and_stored_as_they_came(
    world: World,
) -> None:
    intake = world.intake()
    signer = world.signer()
    sent = [signer.sign_chunk(output("total 0\r\n" * 2000, 0.1)), signer.sign_chunk(final=True)]
    # Level 9, not the broker's own level 1: what is stored must be the agent's bytes.
    compressed = [zlib.compress(raw, 9) for raw in sent]
    assert await intake.receive(TARGET, compressed[0], compressed=True)
    assert await intake.receive(TARGET, compressed[0], compressed=True)  # resent: skipped
    assert await intake.receive(TARGET, compressed[1], compressed=True)
    assert await stored_chunks(world) == sent
    recording = await world.recordings.get("conn-1")
    assert recording is not None
    assert recording.state == RecordingState.COMPLETE
    assert recording.stored_bytes == sum(len(data) for data in compressed)
    assert verify_recording(await stored_chunks(world), world.key.public_key()).complete


@pytest.mark.asyncio
async def test_compressed_chunks_that_are_not_one_bounded_zlib_stream_are_refused(
    world: World,
) -> None:
    intake = world.intake()
    signer = world.signer()
    first = signer.sign_chunk(output("one"))
    bomb = zlib.compress(b"\0" * (MAX_SIGNED_CHUNK_BYTES + 1), 9)  # ~1 KiB that inflates past it
    for data in (
        b"not zlib at all",
        zlib.compress(first)[:-5],  # cut short
        zlib.compress(first) + b"more",  # something after the stream
        bomb,
    ):
        assert not await intake.receive(TARGET, data, compressed=True)
    assert await stored_chunks(world) == []
    assert await intake.receive(TARGET, zlib.compress(first), compressed=True)
    # Inflated, a chunk is checked like any other: a broken signature is refused.
    tampered = bytearray(signer.sign_chunk(output("two")))
    tampered[-1] ^= 1
    assert not await intake.receive(TARGET, zlib.compress(bytes(tampered)), compressed=True)
    assert await stored_chunks(world) == [first]


@pytest.mark.asyncio
async def test_a_terminated_target_has_its_live_recordings_end_incomplete(world: World) -> None:
    other_key = keys.generate_signing_key()
    world.directory.add("target-2", keys.public_key_bytes(other_key.public_key()))
    intake = world.intake()
    running, finished = world.signer("conn-1"), world.signer("conn-2")
    elsewhere = world.signer("conn-3", target_id="target-2", key=other_key)
    assert await intake.receive(TARGET, running.sign_chunk(output("half")))
    assert await intake.receive(TARGET, finished.sign_chunk(output("all"), final=True))
    assert await intake.receive("target-2", elsewhere.sign_chunk(output("there")))
    await intake.abandon_target(TARGET)
    states = [await world.recordings.get(c) for c in ("conn-1", "conn-2", "conn-3")]
    assert [r.state if r else None for r in states] == [
        RecordingState.INCOMPLETE,
        RecordingState.COMPLETE,
        RecordingState.LIVE,
    ]


@pytest.mark.asyncio
async def test_another_target_cannot_add_to_a_recording_or_name_another_target(
    world: World,
) -> None:
    other_key = keys.generate_signing_key()
    world.directory.add("target-2", keys.public_key_bytes(other_key.public_key()))
    intake = world.intake()
    signer = world.signer()
    assert await intake.receive(TARGET, signer.sign_chunk(output("mine")))
    intruder = world.signer(key=other_key)
    intruder.sign_chunk()
    assert not await intake.receive("target-2", intruder.sign_chunk(output("theirs")))
    # Its own key, but a header naming the other target: refused before anything is stored.
    liar = world.signer("conn-2", target_id=TARGET, key=other_key)
    assert not await intake.receive("target-2", liar.sign_chunk(output("x")))
    assert await world.recordings.get("conn-2") is None
    assert len(await stored_chunks(world)) == 1
    # After a broker restart too: the intruder's chunk comes first, the chain stays whole.
    restarted = world.intake()
    assert not await restarted.receive("target-2", intruder.sign_chunk(output("again")))
    assert await restarted.receive(TARGET, signer.sign_chunk(output("still mine")))
    assert len(await stored_chunks(world)) == 2


@pytest.mark.asyncio
async def test_garbage_is_refused(world: World) -> None:
    intake = world.intake()
    assert not await intake.receive(TARGET, b"\xff\x00 not a chunk")
    assert not await intake.receive(TARGET, mrzap_pb2.Signed(payload=b"").SerializeToString())


@pytest.mark.asyncio
async def test_recordings_past_the_retention_period_are_purged(world: World) -> None:
    intake = world.intake()
    old = world.signer("conn-old")
    assert await intake.receive(TARGET, old.sign_chunk(output("old"), commands=typed("ls")))
    world.clock.set(START + 10 * 86400)
    new = world.signer("conn-new")
    assert await intake.receive(TARGET, new.sign_chunk(output("new")))
    purger = RecordingPurger(
        world.recordings, AuditConfig(recording_retention_s=7 * 86400), world.clock
    )
    assert await purger.purge_once() == 1
    assert await world.recordings.get("conn-old") is None
    assert await stored_chunks(world, "conn-old") == []
    assert await world.recordings.get("conn-new") is not None
    assert len(await stored_chunks(world, "conn-new")) == 1
    assert await purger.purge_once() == 0


def test_the_retention_must_be_positive() -> None:
    with pytest.raises(InvalidArgument, match="retention"):
        AuditConfig(recording_retention_s=0)


def test_no_flipped_byte_of_a_chunk_is_ever_stored(tmp_path: Path) -> None:
    """Property: whatever single byte of a signed chunk changes, the intake refuses it (and does
    not raise), and nothing of it is stored."""
    url = sqlite_url(tmp_path / "mrzap.db")
    setup = Database(url)
    setup.migrate([MIGRATIONS])
    asyncio.run(setup.close())
    key = keys.generate_signing_key()
    grant = mrzap_pb2.Grant(grant_id="g", target_id=TARGET, target_user="root", subject=SUBJECT)
    signer = ChainSigner(key, "conn-flip", recording_header(grant, 80, 24, START))
    original = signer.sign_chunk(output("secret output"), typed("ls"))

    async def refused(position: int, flip: int) -> None:
        database = Database(url)
        try:
            directory = MemoryDirectory()
            directory.add(TARGET, keys.public_key_bytes(key.public_key()))
            recordings = Recordings(RecordingStore(database), AuditLog(AuditStore(database)))
            damaged = bytearray(original)
            damaged[position] ^= flip
            assert not await RecordingIntake(recordings, directory).receive(TARGET, bytes(damaged))
            assert await recordings.store.chunks("conn-flip", 0, 10) == []
        finally:
            await database.close()

    @settings(max_examples=60, deadline=None)
    @given(
        position=st.integers(min_value=0, max_value=len(original) - 1),
        flip=st.integers(min_value=1, max_value=255),
    )
    def check(position: int, flip: int) -> None:
        asyncio.run(refused(position, flip))

    check()
