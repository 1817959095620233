"""A malicious service, tested (PROTOCOL.md section 9): a real agent refuses everything it forges.

The organisation is real: the development IdP, `mrzapd serve`, alice and bob logged in with MFA
through `zli login`, a policy that lets them run commands as this test's Unix user on one target,
and a real `mrzap-agent run` process registered there (pinning the real grant keys and IdP).
Then the agent's agent.toml is pointed at `EvilBroker` (tests/e2e/evil_broker.py), which holds
the service's TLS certificate and its grant key: it is the service, compromised. It passes the
agent real PK tokens and real grants (issued by the real broker through OpenConnection) in SYNs
it built, forged, replayed or spliced, and forges, flips and reorders channel frames.

Each case names the agent check it exercises (agent/_verifier.py → mrzap/handshake.py section 5
steps, mrzap/channel.py section 6) and asserts the agent's signed Reject (or, for frames, its
encrypted channel error) carries that check's reason code, and that the command -- `touch` of a
marker file -- never ran: the marker does not exist after the answer and a short bounded wait.
The rest of each SYN is valid, so without that check the command would run, as the control case
shows: the same harness with nothing forged runs it. (Removing each check in turn from a copy of
the code makes its case fail; a later check may still refuse, but with another reason code.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.agent.v1 import agent_service_pb2 as agent_pb
from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.channel import Direction, FrameOpener, FrameSealer, new_key_exchange
from mrzap.envelope import Domain, parse_signed, sign, signed_hash, verify_signature
from mrzap.grant import GrantSigner
from mrzap.handshake import (
    MAX_SYN_BYTES,
    PROTOCOL_VERSION,
    Action,
    ClientHandshake,
    build_syn,
    verify_synack,
)
from mrzap.process import ChildProcess
from mrzap.timestamps import to_timestamp
from mrzap.tls import TlsFiles
from mrzap.verification import Reason
from policy import GrantKeyring
from zli._state import StateDir

from .client_channel import pk_token
from .conftest import Cluster
from .evil_broker import AgentLink, EvilBroker
from .targets import ME, enrolled_org, register_target
from .test_agents import ONLINE_LINE, run_agent

TIMEOUT_S = 15.0
#: After the agent has answered, how long a command it wrongly started would have to create the
#: marker. Bounded, and not a timing assertion: a refused command never runs at all.
GRACE_S = 0.5
POLICY = f"""\
name: evil-suite
kind: target_connect
subjects:
  emails: [alice@example.com, bob@example.com]
targets:
  environments: [e2e-evil]
target_users: [{ME}]
verbs: [shell, exec]
max_session_duration: 1h
"""


@dataclasses.dataclass(frozen=True)
class User:
    """A user who logged in with `zli login`: the honest pieces the service gets to see."""

    home: Path

    @property
    def session_key(self) -> Ed25519PrivateKey:
        return StateDir(self.home).load_key()

    def pk_token(self) -> mrzap_pb2.PkToken:
        return pk_token(self.home)

    def open_connection(
        self, cluster: Cluster, target_id: str, verb: mrzap_pb2.Verb.ValueType = mrzap_pb2.VERB_EXEC
    ) -> pb.OpenConnectionResponse:
        """A real grant from the real broker (its policy decision) for this user."""
        token = StateDir(self.home).load().session_token
        credentials = grpc.ssl_channel_credentials(cluster.ca_file.read_bytes())
        with grpc.secure_channel(cluster.server, credentials) as channel:
            response: pb.OpenConnectionResponse = pb_grpc.BrokerServiceStub(channel).OpenConnection(
                pb.OpenConnectionRequest(target_id=target_id, verb=verb, target_user=ME),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=TIMEOUT_S,
            )
        return response


@dataclasses.dataclass
class World:
    """The real organisation, the evil broker and the agent it holds."""

    cluster: Cluster
    alice: User
    bob: User
    target_id: str
    other_target_id: str
    """Another registered target, in the same environment (so the policy grants it too)."""
    agent_key: Ed25519PublicKey
    link: AgentLink
    grant_signer: GrantSigner
    """The service's real grant key, as a compromised service holds it."""
    markers: Path
    """A world-writable folder for marker files."""

    def grant_of(self, user: User, target_id: str | None = None) -> mrzap_pb2.Signed:
        return user.open_connection(self.cluster, target_id or self.target_id).grant

    def marker(self) -> Path:
        return self.markers / f"ran-{uuid.uuid4().hex}"


def _point_at(config: Path, address: str) -> None:
    """Make the agent dial `address` instead of the real service (as DNS or routing would)."""
    text = re.sub(r'(?m)^server = ".*"$', f'server = "{address}"', config.read_text())
    config.write_text(text)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("evil")
    # Outside pytest's 0700 temporary folders, so a command run as any user could reach it.
    markers = Path(tempfile.mkdtemp(prefix="mrzap-markers-"))
    markers.chmod(0o1777)
    try:
        with enrolled_org(
            root, users=("alice", "bob"), env="e2e-evil", policy=POLICY, extra_config=""
        ) as enrolled:
            org, cluster, key = enrolled.org, enrolled.org.cluster, enrolled.registration_key
            config_dir = root / "agent"
            target_id = register_target(org, config_dir, "evil-web", key, target_users=(ME,))
            other_target_id = register_target(org, root / "other-agent", "other-web", key)

            tls = TlsFiles(cluster.root / "data" / "tls")
            agent_key = keys.load_private_key(config_dir / "agent.key").public_key()
            evil = EvilBroker(
                certificate_chain=tls.server_chain(),
                private_key=tls.server_key.read_bytes(),
                agent_key=agent_key,
            )
            evil.start()
            agent: ChildProcess | None = None
            try:
                _point_at(config_dir / "agent.toml", evil.address)
                agent = run_agent(config_dir)
                agent.wait_for(ONLINE_LINE, timeout_s=30)
                link = evil.wait_agent(TIMEOUT_S)
                assert link.target_id == target_id
                yield World(
                    cluster=cluster,
                    alice=User(enrolled.homes["alice"]),
                    bob=User(enrolled.homes["bob"]),
                    target_id=target_id,
                    other_target_id=other_target_id,
                    agent_key=agent_key,
                    link=link,
                    grant_signer=GrantKeyring.load_or_create(
                        cluster.root / "data" / "keys"
                    ).signer(),
                    markers=markers,
                )
            finally:
                if agent is not None:
                    agent.stop()
                    print(agent.output)  # shown when a test failed
                evil.stop()
    finally:
        shutil.rmtree(markers, ignore_errors=True)


# --- building SYNs and reading answers ---------------------------------------------------------


def exec_syn(
    *,
    signer: Ed25519PrivateKey,
    pk_token: mrzap_pb2.PkToken,
    grant: mrzap_pb2.Signed,
    command: str,
    channel_id: str | None = None,
    target_id: str | None = None,
    target_user: str = ME,
    timestamp_ms: int | None = None,
    padding: int = 0,
) -> tuple[str, bytes]:
    """A SYN for `exec command` built by hand, signed with `signer`; (channel id, SYN bytes).

    Unless overridden, everything is as an honest client would send it (`build_syn`).
    `padding` bytes go into an unknown field, which a parser skips: the SYN stays valid.
    """
    channel_id = channel_id or str(uuid.uuid4())
    syn = mrzap_pb2.Syn(
        version=PROTOCOL_VERSION,
        channel_id=channel_id,
        target_id=target_id or mrzap_pb2.Grant.FromString(grant.payload).target_id,
        client_nonce=secrets.token_bytes(32),
        timestamp_ms=round(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        client_kx=new_key_exchange()[1],
        pk_token=pk_token,
        grant=grant,
        exec=mrzap_pb2.Exec(target_user=target_user, command=command),
    )
    payload = syn.SerializeToString() + (_unknown_field(padding) if padding else b"")
    return channel_id, sign(signer, Domain.SYN, payload).SerializeToString()


def _unknown_field(size: int) -> bytes:
    """Field 1000, length-delimited, `size` zero bytes: in no message of the protocol."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes((*out, value))

    return varint(1000 << 3 | 2) + varint(size) + bytes(size)


def user_syn(user: User, grant: mrzap_pb2.Signed, command: str) -> tuple[str, bytes]:
    """What `user`'s own client would send with `grant`."""
    return exec_syn(signer=user.session_key, pk_token=user.pk_token(), grant=grant, command=command)


def service_grant(world: World, edit: Callable[[mrzap_pb2.Grant], None]) -> mrzap_pb2.Signed:
    """A grant signed with the service's real grant key: alice's real grant, edited."""
    grant = mrzap_pb2.Grant.FromString(world.grant_of(world.alice).payload)
    grant.grant_id = str(uuid.uuid4())
    edit(grant)
    return world.grant_signer.sign(grant)


def reject_of(world: World, channel_id: str, syn: bytes) -> mrzap_pb2.Reject:
    """Send the SYN on `channel_id`; the agent's signed Reject, checked."""
    world.link.open_channel(channel_id, syn)
    answer = world.link.answer(channel_id, TIMEOUT_S)
    assert answer.WhichOneof("answer") == "reject", "the agent accepted the SYN"
    payload = verify_signature(parse_signed(answer.reject), world.agent_key, Domain.REJECT)
    reject = mrzap_pb2.Reject.FromString(payload)
    assert reject.syn_hash == signed_hash(syn)
    return reject


def assert_refused(world: World, channel_id: str, syn: bytes, reason: Reason, marker: Path) -> str:
    """The agent rejects the SYN with `reason` and the command never ran; the Reject's words."""
    reject = reject_of(world, channel_id, syn)
    assert Reason.from_wire(reject.code) is reason, reject.message
    time.sleep(GRACE_S)
    assert not marker.exists(), f"{marker} exists: the command ran"
    return reject.message


def until_close(
    world: World, channel_id: str, opener: FrameOpener
) -> list[mrzap_pb2.ChannelMessage]:
    """Every message the agent sends on the channel until it closes it, decrypted."""
    return closing(world, channel_id, opener)[0]


def closing(
    world: World, channel_id: str, opener: FrameOpener
) -> tuple[list[mrzap_pb2.ChannelMessage], agent_pb.ChannelClose]:
    """`until_close`, and the agent's ChannelClose."""
    messages: list[mrzap_pb2.ChannelMessage] = []
    while True:
        message = world.link.next(channel_id, TIMEOUT_S)
        kind = message.WhichOneof("frame")
        if kind == "channel_close":
            return messages, message.channel_close
        assert kind == "channel_frame", message
        messages.append(opener.open(message.channel_frame.frame))


@dataclasses.dataclass
class Honest:
    """An accepted handshake, driven by the test as the user's client."""

    channel_id: str
    handshake: ClientHandshake
    result: mrzap_pb2.ActionResult
    sealer: FrameSealer
    opener: FrameOpener


def honest_open(world: World, user: User, action: Action) -> Honest:
    """The user's client opens `action` through the evil broker; it is accepted."""
    verb = mrzap_pb2.VERB_EXEC if isinstance(action, mrzap_pb2.Exec) else mrzap_pb2.VERB_SHELL
    opened = user.open_connection(world.cluster, world.target_id, verb)
    handshake = build_syn(
        session_key=user.session_key,
        pk_token=user.pk_token(),
        signed_grant=opened.grant,
        channel_id=opened.channel_id,
        action=action,
    )
    world.link.open_channel(opened.channel_id, handshake.signed_syn)
    answer = world.link.answer(opened.channel_id, TIMEOUT_S)
    assert answer.WhichOneof("answer") == "syn_ack", answer
    established = verify_synack(handshake, answer.syn_ack)
    return Honest(
        opened.channel_id,
        handshake,
        established.synack.result,
        FrameSealer(established.keys, opened.channel_id, Direction.CLIENT_TO_AGENT),
        FrameOpener(established.keys, opened.channel_id, Direction.AGENT_TO_CLIENT),
    )


def honest_exec(world: World, user: User, command: str) -> Honest:
    """The user's client runs `command` through the evil broker; it is accepted."""
    return honest_open(world, user, mrzap_pb2.Exec(target_user=ME, command=command))


def exit_code(messages: list[mrzap_pb2.ChannelMessage]) -> int | None:
    return next((m.exit.code for m in messages if m.HasField("exit")), None)


# --- the harness works -------------------------------------------------------------------------


def test_an_honest_syn_through_the_evil_broker_runs(world: World) -> None:
    """The control case: the same harness, nothing forged, runs the command."""
    marker = world.marker()
    channel = honest_exec(world, world.alice, f"touch {marker}")
    assert exit_code(until_close(world, channel.channel_id, channel.opener)) == 0
    assert marker.exists()


# --- the handshake (PROTOCOL.md section 5) -----------------------------------------------------


def test_a_grant_signed_with_an_unpinned_key_is_refused(world: World) -> None:
    """Step 2: the grant's key id must be one the agent pinned (`verify_grant`)."""
    marker = world.marker()
    grant = mrzap_pb2.Grant.FromString(world.grant_of(world.alice).payload)
    forged = GrantSigner(keys.generate_signing_key(), "evil-key").sign(grant)
    channel_id, syn = user_syn(world.alice, forged, f"touch {marker}")
    assert_refused(world, channel_id, syn, Reason.GRANT_UNKNOWN_KEY, marker)


def test_a_grant_forged_under_a_pinned_key_id_is_refused(world: World) -> None:
    """Step 2: the grant's signature must verify under the pinned key it names."""
    marker = world.marker()
    grant = mrzap_pb2.Grant.FromString(world.grant_of(world.alice).payload)
    forged = GrantSigner(keys.generate_signing_key(), grant.key_id).sign(grant)
    channel_id, syn = user_syn(world.alice, forged, f"touch {marker}")
    assert_refused(world, channel_id, syn, Reason.GRANT_BAD_SIGNATURE, marker)


def test_a_syn_signed_by_another_key_than_its_pk_token_names_is_refused(world: World) -> None:
    """Step 4: alice's real PK token and real grant, in a SYN the service signed itself."""
    marker = world.marker()
    channel_id, syn = exec_syn(
        signer=keys.generate_signing_key(),
        pk_token=world.alice.pk_token(),
        grant=world.grant_of(world.alice),
        command=f"touch {marker}",
    )
    assert_refused(world, channel_id, syn, Reason.SYN_BAD_SIGNATURE, marker)


def test_a_real_syn_with_its_command_changed_is_refused(world: World) -> None:
    """Step 4: the SYN signature covers the action; the broker cannot rewrite the command."""
    marker = world.marker()
    channel_id, honest = user_syn(world.alice, world.grant_of(world.alice), "true")
    envelope = parse_signed(honest)
    syn = mrzap_pb2.Syn.FromString(envelope.payload)
    syn.exec.command = f"touch {marker}"
    envelope.payload = syn.SerializeToString()
    assert_refused(
        world, channel_id, envelope.SerializeToString(), Reason.SYN_BAD_SIGNATURE, marker
    )


def test_the_service_cannot_bind_a_users_pk_token_to_its_own_key(world: World) -> None:
    """Section 9, first row: the service holds the grant key but not the user's session key.

    It signs a grant for alice naming its own key and signs the SYN with that key. With alice's
    real PK token, step 3's `pk_token.upk == grant.upk` fails; with the token's upk swapped for
    its own key, the ID token's nonce (signed by the IdP) no longer matches.
    """
    evil_key = keys.generate_signing_key()
    grant = service_grant(world, lambda g: setattr(g, "upk", keys.public_key_bytes(evil_key)))
    marker = world.marker()
    channel_id, syn = exec_syn(
        signer=evil_key, pk_token=world.alice.pk_token(), grant=grant, command=f"touch {marker}"
    )
    assert_refused(world, channel_id, syn, Reason.TOKEN_UPK_MISMATCH, marker)

    rebound = world.alice.pk_token()
    rebound.upk = keys.public_key_bytes(evil_key)
    channel_id, syn = exec_syn(
        signer=evil_key, pk_token=rebound, grant=grant, command=f"touch {marker}"
    )
    assert_refused(world, channel_id, syn, Reason.TOKEN_NONCE_MISMATCH, marker)


def test_swapped_grants_are_refused(world: World) -> None:
    """Step 3: alice's SYN carrying bob's real grant (bound to bob's key); and a service-signed
    grant naming bob but alice's key (the token's subject is not the grant's)."""
    marker = world.marker()
    channel_id, syn = user_syn(world.alice, world.grant_of(world.bob), f"touch {marker}")
    assert_refused(world, channel_id, syn, Reason.TOKEN_UPK_MISMATCH, marker)

    bobs = mrzap_pb2.Grant.FromString(world.grant_of(world.bob).payload)
    grant = service_grant(world, lambda g: g.subject.CopyFrom(bobs.subject))
    channel_id, syn = user_syn(world.alice, grant, f"touch {marker}")
    assert_refused(world, channel_id, syn, Reason.TOKEN_SUBJECT_MISMATCH, marker)


def test_a_replayed_syn_is_refused(world: World) -> None:
    """Step 5: the same SYN bytes again -- on the channel they named, after it ended, and on a
    new channel -- never run twice. The command's second run would create the marker."""
    first, marker = world.marker(), world.marker()
    command = f"if [ -e {first} ]; then touch {marker}; else touch {first}; fi"
    channel = honest_exec(world, world.alice, command)
    assert exit_code(until_close(world, channel.channel_id, channel.opener)) == 0
    assert first.exists()

    syn = channel.handshake.signed_syn
    assert_refused(world, channel.channel_id, syn, Reason.SYN_REPLAYED, marker)
    assert_refused(world, str(uuid.uuid4()), syn, Reason.SYN_REPLAYED, marker)


def test_a_syn_for_another_target_is_refused(world: World) -> None:
    """Step 4: `syn.target_id` must be this agent (the grant is for it)."""
    marker = world.marker()
    channel_id, syn = exec_syn(
        signer=world.alice.session_key,
        pk_token=world.alice.pk_token(),
        grant=world.grant_of(world.alice),
        command=f"touch {marker}",
        target_id=world.other_target_id,
    )
    assert_refused(world, channel_id, syn, Reason.SYN_WRONG_TARGET, marker)


def test_a_grant_for_another_target_is_refused(world: World) -> None:
    """Step 2: alice's real grant for another target, sent to this one."""
    marker = world.marker()
    grant = world.grant_of(world.alice, world.other_target_id)
    channel_id, syn = exec_syn(
        signer=world.alice.session_key,
        pk_token=world.alice.pk_token(),
        grant=grant,
        command=f"touch {marker}",
        target_id=world.target_id,
    )
    assert_refused(world, channel_id, syn, Reason.GRANT_WRONG_TARGET, marker)


def test_a_syn_on_another_channel_than_it_names_is_refused(world: World) -> None:
    """The agent's channel check (agent/_channels.py): a SYN spliced onto another channel."""
    marker = world.marker()
    _, syn = user_syn(world.alice, world.grant_of(world.alice), f"touch {marker}")
    message = assert_refused(world, str(uuid.uuid4()), syn, Reason.MALFORMED, marker)
    assert "another channel" in message


def test_an_expired_or_early_grant_is_refused(world: World) -> None:
    """Step 2: `not_before <= now < start_by`, for grants the service signed with its real key."""
    now = time.time()

    def expired(grant: mrzap_pb2.Grant) -> None:
        grant.not_before.CopyFrom(to_timestamp(now - 120))
        grant.start_by.CopyFrom(to_timestamp(now - 60))

    def early(grant: mrzap_pb2.Grant) -> None:
        grant.not_before.CopyFrom(to_timestamp(now + 600))
        grant.start_by.CopyFrom(to_timestamp(now + 660))
        grant.session_expires_at.CopyFrom(to_timestamp(now + 3600))

    for edit, reason in (
        (expired, Reason.GRANT_START_BY_PASSED),
        (early, Reason.GRANT_NOT_YET_VALID),
    ):
        marker = world.marker()
        channel_id, syn = user_syn(world.alice, service_grant(world, edit), f"touch {marker}")
        assert_refused(world, channel_id, syn, reason, marker)


def test_an_oversized_syn_is_refused(world: World) -> None:
    """Step 1: a SYN over 64 KiB is refused before anything in it is parsed or verified."""
    marker = world.marker()
    channel_id, syn = exec_syn(
        signer=world.alice.session_key,
        pk_token=world.alice.pk_token(),
        grant=world.grant_of(world.alice),
        command=f"touch {marker}",
        padding=MAX_SYN_BYTES,
    )
    assert_refused(world, channel_id, syn, Reason.TOO_LARGE, marker)


def test_a_stale_syn_is_refused(world: World) -> None:
    """Step 4: the SYN's timestamp must be within 120 s of the agent's clock."""
    marker = world.marker()
    channel_id, syn = exec_syn(
        signer=world.alice.session_key,
        pk_token=world.alice.pk_token(),
        grant=world.grant_of(world.alice),
        command=f"touch {marker}",
        timestamp_ms=round((time.time() - 600) * 1000),
    )
    assert_refused(world, channel_id, syn, Reason.SYN_CLOCK_SKEW, marker)


def test_an_action_outside_the_grant_is_refused(world: World) -> None:
    """Step 6: a command under a shell-only grant; a command as a user the grant does not name."""
    marker = world.marker()
    shell_grant = world.alice.open_connection(world.cluster, world.target_id, mrzap_pb2.VERB_SHELL)
    channel_id, syn = user_syn(world.alice, shell_grant.grant, f"touch {marker}")
    assert_refused(world, channel_id, syn, Reason.ACTION_VERB_NOT_GRANTED, marker)

    channel_id, syn = exec_syn(
        signer=world.alice.session_key,
        pk_token=world.alice.pk_token(),
        grant=world.grant_of(world.alice),
        command=f"touch {marker}",
        target_user="root" if ME != "root" else "daemon",
    )
    assert_refused(world, channel_id, syn, Reason.ACTION_TARGET_USER_NOT_GRANTED, marker)


def test_a_grant_never_reaches_another_users_shell(world: World) -> None:
    """The agent's re-attach check (agent/_sessions.py): alice's own valid shell grant, used to
    attach to bob's running shell, is refused with the same answer as for no such shell."""
    bobs = honest_open(world, world.bob, mrzap_pb2.ShellOpen(target_user=ME, rows=24, cols=80))
    try:
        grant = world.alice.open_connection(world.cluster, world.target_id, mrzap_pb2.VERB_SHELL)
        attach = mrzap_pb2.ShellAttach(target_user=ME, connection_id=bobs.result.connection_id)
        handshake = build_syn(
            session_key=world.alice.session_key,
            pk_token=world.alice.pk_token(),
            signed_grant=grant.grant,
            channel_id=grant.channel_id,
            action=attach,
        )
        reject = reject_of(world, grant.channel_id, handshake.signed_syn)
        assert Reason.from_wire(reject.code) is Reason.ACTION_TARGET_USER_NOT_GRANTED
        assert "no shell" in reject.message
    finally:
        world.link.send_frame(
            bobs.channel_id, bobs.sealer.seal(mrzap_pb2.ChannelMessage(close=mrzap_pb2.Close()))
        )
    assert exit_code(until_close(world, bobs.channel_id, bobs.opener)) is not None


# --- the channel (PROTOCOL.md section 6) -------------------------------------------------------


def assert_channel_ended(world: World, channel: Honest, reason: Reason, marker: Path) -> None:
    """The agent ends the channel with a ChannelError of `reason`, and the command never ran."""
    messages = until_close(world, channel.channel_id, channel.opener)
    errors = [m.error for m in messages if m.HasField("error")]
    assert errors, messages
    assert Reason.from_wire(errors[0].code) is reason, errors[0].message
    time.sleep(GRACE_S)
    assert not marker.exists(), f"{marker} exists: the command ran"


def test_a_flipped_ciphertext_byte_ends_the_channel(world: World) -> None:
    """AES-GCM's tag (`FrameOpener`): a frame changed in flight ends the channel unread."""
    marker = world.marker()
    channel = honest_exec(world, world.alice, f"read line && touch {marker}")
    frame = channel.sealer.seal(mrzap_pb2.ChannelMessage(stdin=b"go\n"))
    flipped = bytearray(frame.ciphertext)
    flipped[2] ^= 0x01  # inside the stdin bytes: unauthenticated, it would still parse
    world.link.send_frame(
        channel.channel_id, mrzap_pb2.Frame(seq=frame.seq, ciphertext=bytes(flipped))
    )
    assert_channel_ended(world, channel, Reason.FRAME_AUTH_FAILED, marker)


def test_a_broken_frame_ends_a_shells_channel_but_the_shell_runs_on(world: World) -> None:
    """The shell outlives a channel ended for a changed frame, which it never reads; the
    agent's ChannelClose says it runs on (the broker records it DETACHED) and it re-attaches."""
    marker = world.marker()
    shell = honest_open(world, world.alice, mrzap_pb2.ShellOpen(target_user=ME, rows=24, cols=80))
    frame = shell.sealer.seal(mrzap_pb2.ChannelMessage(stdin=f"touch {marker}\n".encode()))
    flipped = bytearray(frame.ciphertext)
    flipped[2] ^= 0x01
    world.link.send_frame(
        shell.channel_id, mrzap_pb2.Frame(seq=frame.seq, ciphertext=bytes(flipped))
    )
    messages, close = closing(world, shell.channel_id, shell.opener)
    errors = [m.error for m in messages if m.HasField("error")]
    assert errors, messages
    assert Reason.from_wire(errors[0].code) is Reason.FRAME_AUTH_FAILED
    assert close.detached
    attach = mrzap_pb2.ShellAttach(target_user=ME, connection_id=shell.result.connection_id)
    again = honest_open(world, world.alice, attach)
    world.link.send_frame(
        again.channel_id, again.sealer.seal(mrzap_pb2.ChannelMessage(close=mrzap_pb2.Close()))
    )
    messages, close = closing(world, again.channel_id, again.opener)
    assert exit_code(messages) is not None
    assert not close.detached  # the shell is over now
    assert not marker.exists(), f"{marker} exists: the changed frame was read"


def test_reordered_frames_end_the_channel(world: World) -> None:
    """Strict frame order (`FrameOpener`): frame 1 delivered before frame 0 ends the channel.

    Accepted in the order delivered, the first line read would be "second" and the marker made.
    """
    marker = world.marker()
    channel = honest_exec(world, world.alice, f'read x && [ "$x" = second ] && touch {marker}')
    first = channel.sealer.seal(mrzap_pb2.ChannelMessage(stdin=b"first\n"))
    second = channel.sealer.seal(mrzap_pb2.ChannelMessage(stdin=b"second\n"))
    world.link.send_frame(channel.channel_id, second)
    world.link.send_frame(channel.channel_id, first)
    assert_channel_ended(world, channel, Reason.FRAME_OUT_OF_ORDER, marker)


def test_a_replayed_frame_ends_the_channel(world: World) -> None:
    """Strict frame order (`FrameOpener`): frame 0 delivered twice ends the channel.

    Accepted twice, the command would read two lines and make the marker.
    """
    marker = world.marker()
    channel = honest_exec(world, world.alice, f"read x && read y && touch {marker}")
    frame = channel.sealer.seal(mrzap_pb2.ChannelMessage(stdin=b"once\n"))
    world.link.send_frame(channel.channel_id, frame)
    world.link.send_frame(channel.channel_id, frame)
    assert_channel_ended(world, channel, Reason.FRAME_OUT_OF_ORDER, marker)


def test_a_frame_spliced_from_another_channel_ends_the_channel(world: World) -> None:
    """Each channel has its own keys, and its id in every frame's AAD (`FrameOpener`): frame 0
    of one of alice's channels, delivered as frame 0 of another, does not authenticate there."""
    marker = world.marker()
    donor = honest_exec(world, world.alice, "cat > /dev/null")
    victim = honest_exec(world, world.alice, f"read x && touch {marker}")
    frame = donor.sealer.seal(mrzap_pb2.ChannelMessage(stdin=b"go\n"))
    world.link.send_frame(victim.channel_id, frame)
    assert_channel_ended(world, victim, Reason.FRAME_AUTH_FAILED, marker)
    world.link.send_frame(
        donor.channel_id, donor.sealer.seal(mrzap_pb2.ChannelMessage(close=mrzap_pb2.Close()))
    )
    until_close(world, donor.channel_id, donor.opener)


def test_the_agent_ends_a_session_when_its_grant_says_so(world: World) -> None:
    """The grant's `session_expires_at` (agent/_verifier.py `still_valid`): the broker keeps the
    channel open and says nothing, yet the agent ends the shell when the session expires."""
    now = time.time()

    def short(grant: mrzap_pb2.Grant) -> None:
        grant.verb = mrzap_pb2.VERB_SHELL
        grant.start_by.CopyFrom(to_timestamp(now + 4))
        grant.session_expires_at.CopyFrom(to_timestamp(now + 4))

    handshake = build_syn(
        session_key=world.alice.session_key,
        pk_token=world.alice.pk_token(),
        signed_grant=service_grant(world, short),
        channel_id=str(uuid.uuid4()),
        action=mrzap_pb2.ShellOpen(target_user=ME, rows=24, cols=80),
    )
    channel_id = handshake.syn.channel_id
    world.link.open_channel(channel_id, handshake.signed_syn)
    answer = world.link.answer(channel_id, TIMEOUT_S)
    assert answer.WhichOneof("answer") == "syn_ack", answer
    keys_ = verify_synack(handshake, answer.syn_ack).keys
    opener = FrameOpener(keys_, channel_id, Direction.AGENT_TO_CLIENT)
    # Ends by itself: until_close fails if the agent leaves the channel open.
    messages = until_close(world, channel_id, opener)
    assert exit_code(messages) is not None, messages


def test_the_brokers_position_sees_only_ciphertext(world: World) -> None:
    """Section 9, third row: the channel frames the broker relays are ciphertext.

    A secret goes in as stdin; the command prints its digest. No frame, either way, holds the
    secret or the digest. Nothing else on the control stream holds the secret either: the agent
    sends the service recordings of the *output* (section 8, by design), but of input only when
    a session-recording policy says so, and none does here.
    """
    secret = b"the-secret-" + secrets.token_hex(16).encode()
    digest = hashlib.sha256(secret).hexdigest().encode()
    wire_start, frames_start = len(world.link.wire), len(world.link.frames)
    channel = honest_exec(world, world.alice, "sha256sum")
    for message in (
        mrzap_pb2.ChannelMessage(stdin=secret),
        mrzap_pb2.ChannelMessage(end_of_input=mrzap_pb2.EndOfInput()),
    ):
        world.link.send_frame(channel.channel_id, channel.sealer.seal(message))
    messages = until_close(world, channel.channel_id, channel.opener)
    assert b"".join(m.stdout for m in messages).split()[0] == digest
    assert exit_code(messages) == 0
    frames = world.link.frames[frames_start:]
    assert sum(channel.channel_id.encode() in raw for raw in frames) >= 3  # stdin, stdout, exit
    assert not [raw for raw in frames if secret in raw or digest in raw]
    assert not [raw for raw in world.link.wire[wire_start:] if secret in raw]
