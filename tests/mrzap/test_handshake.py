"""The SYN checks of PROTOCOL.md section 5, in order, and the SYN-ACK / Reject answers.

Every check has a test that a SYN failing only that check is rejected with its own reason; the
section 9 attacks (malicious service, forged token, stolen grant, replay) appear by name. ID tokens
are signed by real RSA and EC keys whose JWKS is served over HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.channel import Direction, FrameOpener, FrameSealer
from mrzap.config import AgentLocalPolicy
from mrzap.envelope import Domain, sign
from mrzap.grant import GrantSigner, new_grant_id
from mrzap.handshake import (
    ClientHandshake,
    SynVerifier,
    accept_syn,
    build_syn,
    reject_syn,
    verify_reject,
    verify_synack,
)
from mrzap.jwks import HttpJwksSource, JwksSource
from mrzap.pktoken import PkTokenVerifier
from mrzap.replay import ReplayCache
from mrzap.revocation import RevocationList
from mrzap.testing import FixedClock, TestIdentityProvider
from mrzap.timestamps import to_timestamp
from mrzap.verification import Reason, VerificationError

TARGET = "target-1"
SHELL_ALICE = mrzap_pb2.ShellOpen(target_user="alice", term="xterm", cols=80, rows=24)


class World:
    """One organisation: an IdP, a service key, an agent, and alice logged in with a session key."""

    def __init__(self, idp: TestIdentityProvider, jwks: JwksSource | None = None) -> None:
        self.idp = idp
        self.clock = FixedClock(time.time())
        self.service_key = keys.generate_signing_key()
        self.signer = GrantSigner(self.service_key, "svc-1")
        self.agent_key = keys.generate_signing_key()
        self.session_key = keys.generate_signing_key()
        self.pk_token = self.token_for(self.session_key)
        self.replays = ReplayCache(self.clock)
        self.revocations = RevocationList(clock=self.clock)
        self.verifier = SynVerifier(
            target_id=TARGET,
            service_keys={"svc-1": self.service_key.public_key()},
            tokens=PkTokenVerifier(
                idp.config(client_id="zli"), jwks or HttpJwksSource(), self.clock
            ),
            local_policy=AgentLocalPolicy.from_strings(["alice"], ["127.0.0.1:5432"]),
            replay_cache=self.replays,
            revocations=self.revocations,
            clock=self.clock,
        )

    def token_for(self, key: Ed25519PrivateKey, sub: str = "alice-sub") -> mrzap_pb2.PkToken:
        return self.idp.pk_token(
            keys.public_key_bytes(key),
            sub=sub,
            email=f"{sub.removesuffix('-sub')}@example.com",
            issued_at=self.clock.now(),
        )

    def grant(self, **overrides: object) -> mrzap_pb2.Grant:
        now = self.clock.now()
        grant = mrzap_pb2.Grant(
            grant_id=new_grant_id(),
            org_id="org-1",
            subject=mrzap_pb2.Subject(
                iss=self.idp.issuer, sub="alice-sub", email="alice@example.com"
            ),
            upk=keys.public_key_bytes(self.session_key),
            target_id=TARGET,
            target_public_key=keys.public_key_bytes(self.agent_key),
            verb=mrzap_pb2.VERB_SHELL,
            target_user="alice",
            not_before=to_timestamp(now - 1),
            start_by=to_timestamp(now + 60),
            session_expires_at=to_timestamp(now + 3600),
        )
        for name, value in overrides.items():
            if isinstance(value, float):
                getattr(grant, name).CopyFrom(to_timestamp(value))
            elif isinstance(value, mrzap_pb2.Subject | mrzap_pb2.Destination):
                getattr(grant, name).CopyFrom(value)
            elif isinstance(value, list):
                getattr(grant, name).extend(value)
            else:
                setattr(grant, name, value)
        return grant

    def syn(
        self,
        action: object = SHELL_ALICE,
        *,
        grant: mrzap_pb2.Signed | None = None,
        session_key: Ed25519PrivateKey | None = None,
        pk_token: mrzap_pb2.PkToken | None = None,
        clock: FixedClock | None = None,
    ) -> ClientHandshake:
        return build_syn(
            session_key=session_key or self.session_key,
            pk_token=pk_token or self.pk_token,
            signed_grant=grant or self.signer.sign(self.grant()),
            channel_id="channel-1",
            action=action,  # type: ignore[arg-type]
            clock=clock or self.clock,
        )

    def resigned(self, mutate: Callable[[mrzap_pb2.Syn], None]) -> bytes:
        """A SYN changed by `mutate` and signed again with alice's session key."""
        syn = mrzap_pb2.Syn()
        syn.CopyFrom(self.syn().syn)
        mutate(syn)
        return sign(self.session_key, Domain.SYN, syn.SerializeToString()).SerializeToString()

    async def reason(self, raw: bytes) -> Reason:
        with pytest.raises(VerificationError) as caught:
            await self.verifier.verify(raw)
        return caught.value.reason


@pytest.fixture
def world(idp: TestIdentityProvider) -> World:
    return World(idp)


# --- the good path ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_accepted_handshake_gives_both_sides_one_channel(world: World) -> None:
    client = world.syn()
    verified = await world.verifier.verify(client.signed_syn)
    assert verified.identity.sub == "alice-sub"
    assert verified.action == "shell_open"
    result = mrzap_pb2.ActionResult(connection_id="conn-1", pid=4242)
    agent_side = accept_syn(verified, world.agent_key, result, world.clock)
    client_side = verify_synack(client, agent_side.signed_synack)
    assert client_side.keys == agent_side.keys
    assert client_side.synack.result.pid == 4242

    to_agent = FrameSealer(client_side.keys, "channel-1", Direction.CLIENT_TO_AGENT)
    at_agent = FrameOpener(agent_side.keys, "channel-1", Direction.CLIENT_TO_AGENT)
    frame = to_agent.seal(mrzap_pb2.ChannelMessage(stdin=b"id\n"))
    assert at_agent.open(frame).stdin == b"id\n"


@pytest.mark.asyncio
async def test_every_action_kind_passes_when_granted(world: World) -> None:
    cases: list[tuple[object, dict[str, object]]] = [
        (mrzap_pb2.Exec(target_user="alice", command="true"), {"verb": mrzap_pb2.VERB_EXEC}),
        (
            mrzap_pb2.TunnelOpen(destination=mrzap_pb2.Destination(host="127.0.0.1", port=5432)),
            {
                "verb": mrzap_pb2.VERB_TUNNEL,
                "target_user": "",
                "destination": mrzap_pb2.Destination(host="127.0.0.1", port=5432),
            },
        ),
        (
            mrzap_pb2.KubeOpen(target_user="alice@example.com", groups=["dev"]),
            {
                "verb": mrzap_pb2.VERB_KUBE,
                "target_user": "alice@example.com",
                "kube_groups": ["dev", "ops"],
            },
        ),
        (
            mrzap_pb2.FileOpen(
                target_user="alice", path="/tmp/x", direction=mrzap_pb2.FILE_DIRECTION_UPLOAD
            ),
            {"verb": mrzap_pb2.VERB_FILE_TRANSFER},
        ),
        (mrzap_pb2.ShellAttach(target_user="alice", connection_id="conn-1"), {}),
    ]
    for action, overrides in cases:
        signed = world.signer.sign(world.grant(**overrides))
        verified = await world.verifier.verify(world.syn(action, grant=signed).signed_syn)
        assert verified.grant.verb == overrides.get("verb", mrzap_pb2.VERB_SHELL)


# --- step 1: size and form ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_oversized_syn(world: World) -> None:
    big = world.syn(mrzap_pb2.Exec(target_user="alice", command="x" * 70_000))
    assert await world.reason(big.signed_syn) is Reason.TOO_LARGE


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff", mrzap_pb2.Signed(payload=b"\xff\xff").SerializeToString(), b""],
)
async def test_malformed_bytes(world: World, raw: bytes) -> None:
    assert await world.reason(raw) is Reason.MALFORMED


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.ClearField("shell_open"),
        lambda s: setattr(s, "client_nonce", b"short"),
        lambda s: setattr(s, "client_kx", b""),
        lambda s: s.ClearField("grant"),
        lambda s: s.ClearField("pk_token"),
        lambda s: setattr(s, "channel_id", ""),
    ],
)
async def test_incomplete_syn(world: World, mutate: Callable[[mrzap_pb2.Syn], None]) -> None:
    assert await world.reason(world.resigned(mutate)) is Reason.MALFORMED


@pytest.mark.asyncio
async def test_unsupported_version(world: World) -> None:
    raw = world.resigned(lambda s: setattr(s, "version", 2))
    assert await world.reason(raw) is Reason.UNSUPPORTED_VERSION


# --- step 2: the service root -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_malicious_service_forges_grant_with_unpinned_key(world: World) -> None:
    rogue = GrantSigner(keys.generate_signing_key(), "svc-rogue")
    raw = world.syn(grant=rogue.sign(world.grant())).signed_syn
    assert await world.reason(raw) is Reason.GRANT_UNKNOWN_KEY


@pytest.mark.asyncio
async def test_grant_signed_by_another_key_under_the_pinned_id(world: World) -> None:
    forger = GrantSigner(keys.generate_signing_key(), "svc-1")
    raw = world.syn(grant=forger.sign(world.grant())).signed_syn
    assert await world.reason(raw) is Reason.GRANT_BAD_SIGNATURE


@pytest.mark.asyncio
async def test_grant_tampered_after_signing(world: World) -> None:
    signed = world.signer.sign(world.grant())
    grant = mrzap_pb2.Grant.FromString(signed.payload)
    grant.target_user = "root"
    signed.payload = grant.SerializeToString()
    raw = world.syn(mrzap_pb2.ShellOpen(target_user="root"), grant=signed).signed_syn
    assert await world.reason(raw) is Reason.GRANT_BAD_SIGNATURE


@pytest.mark.asyncio
async def test_grant_not_yet_valid(world: World) -> None:
    now = world.clock.now()
    raw = world.syn(grant=world.signer.sign(world.grant(not_before=now + 5))).signed_syn
    assert await world.reason(raw) is Reason.GRANT_NOT_YET_VALID


@pytest.mark.asyncio
async def test_grant_start_by_passed(world: World) -> None:
    client = world.syn()
    world.clock.advance(61)
    assert await world.reason(client.signed_syn) is Reason.GRANT_START_BY_PASSED


@pytest.mark.asyncio
async def test_grant_for_another_target(world: World) -> None:
    signed = world.signer.sign(world.grant(target_id="target-2"))

    def carry_the_other_grant(syn: mrzap_pb2.Syn) -> None:
        syn.grant.CopyFrom(signed)
        syn.target_id = TARGET

    raw = world.resigned(carry_the_other_grant)
    assert await world.reason(raw) is Reason.GRANT_WRONG_TARGET


@pytest.mark.asyncio
async def test_grant_session_already_over(world: World) -> None:
    # Only a misbehaving signer produces this: GrantSigner refuses such times.
    now = world.clock.now()
    grant = world.grant(key_id="svc-1", session_expires_at=now - 1)
    signed = sign(world.service_key, Domain.GRANT, grant.SerializeToString(), "svc-1")
    assert await world.reason(world.syn(grant=signed).signed_syn) is Reason.GRANT_SESSION_EXPIRED


@pytest.mark.asyncio
async def test_revoked_grant(world: World) -> None:
    grant = world.grant()
    world.revocations.add(mrzap_pb2.Revocation(grant_ids=[grant.grant_id]))
    raw = world.syn(grant=world.signer.sign(grant)).signed_syn
    assert await world.reason(raw) is Reason.GRANT_REVOKED


@pytest.mark.asyncio
async def test_locked_user(world: World) -> None:
    alice = mrzap_pb2.Subject(iss=world.idp.issuer, sub="alice-sub")
    world.revocations.add(
        mrzap_pb2.Revocation(subjects=[alice], before=to_timestamp(world.clock.now()))
    )
    assert await world.reason(world.syn().signed_syn) is Reason.GRANT_REVOKED


# --- step 3: the IdP root -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_malicious_service_grants_its_own_key_with_the_users_token(world: World) -> None:
    service_session = keys.generate_signing_key()
    grant = world.grant(upk=keys.public_key_bytes(service_session))
    raw = world.syn(grant=world.signer.sign(grant), session_key=service_session).signed_syn
    assert await world.reason(raw) is Reason.TOKEN_UPK_MISMATCH


@pytest.mark.asyncio
async def test_pk_token_rebound_to_another_key(world: World) -> None:
    service_session = keys.generate_signing_key()
    token = mrzap_pb2.PkToken()
    token.CopyFrom(world.pk_token)
    token.upk = keys.public_key_bytes(service_session)
    grant = world.grant(upk=token.upk)
    raw = world.syn(
        grant=world.signer.sign(grant), session_key=service_session, pk_token=token
    ).signed_syn
    assert await world.reason(raw) is Reason.TOKEN_NONCE_MISMATCH


@pytest.mark.asyncio
async def test_grants_of_two_users_swapped(world: World) -> None:
    bob_key = keys.generate_signing_key()
    bob_token = world.token_for(bob_key, sub="bob-sub")
    alices_grant_for_bobs_key = world.grant(upk=keys.public_key_bytes(bob_key))
    raw = world.syn(
        grant=world.signer.sign(alices_grant_for_bobs_key), session_key=bob_key, pk_token=bob_token
    ).signed_syn
    assert await world.reason(raw) is Reason.TOKEN_SUBJECT_MISMATCH


@pytest.mark.asyncio
async def test_expired_id_token(world: World) -> None:
    token = world.idp.pk_token(
        keys.public_key_bytes(world.session_key),
        sub="alice-sub",
        issued_at=world.clock.now() - 3600,
        lifetime_s=600,
    )
    assert await world.reason(world.syn(pk_token=token).signed_syn) is Reason.TOKEN_EXPIRED


@pytest.mark.asyncio
async def test_token_signed_by_a_key_not_in_the_jwks(world: World) -> None:
    token = world.idp.pk_token(
        keys.public_key_bytes(world.session_key),
        sub="alice-sub",
        issued_at=world.clock.now(),
        key="rsa-unpublished",
    )
    assert await world.reason(world.syn(pk_token=token).signed_syn) is Reason.TOKEN_UNKNOWN_KEY


# --- step 4: the client's signature, target and clock --------------------------------------------


@pytest.mark.asyncio
async def test_stolen_grant_and_token_signed_with_another_key(world: World) -> None:
    thief = keys.generate_signing_key()
    raw = world.syn(session_key=thief).signed_syn
    assert await world.reason(raw) is Reason.SYN_BAD_SIGNATURE


@pytest.mark.asyncio
async def test_syn_signed_under_another_domain(world: World) -> None:
    syn = world.syn().syn
    raw = sign(world.session_key, Domain.SYNACK, syn.SerializeToString()).SerializeToString()
    assert await world.reason(raw) is Reason.SYN_BAD_SIGNATURE


@pytest.mark.asyncio
async def test_syn_for_another_target(world: World) -> None:
    raw = world.resigned(lambda s: setattr(s, "target_id", "target-2"))
    assert await world.reason(raw) is Reason.SYN_WRONG_TARGET


@pytest.mark.asyncio
@pytest.mark.parametrize("offset", [-121.0, 121.0])
async def test_syn_outside_the_clock_window(world: World, offset: float) -> None:
    client_clock = FixedClock(world.clock.now() + offset)
    raw = world.syn(clock=client_clock).signed_syn
    assert await world.reason(raw) is Reason.SYN_CLOCK_SKEW


@pytest.mark.asyncio
@pytest.mark.parametrize("offset", [-119.0, 119.0])
async def test_syn_inside_the_clock_window(world: World, offset: float) -> None:
    client_clock = FixedClock(world.clock.now() + offset)
    assert await world.verifier.verify(world.syn(clock=client_clock).signed_syn)


# --- step 5: replay -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_replayed_syn(world: World) -> None:
    signed_grant = world.signer.sign(world.grant())
    client = world.syn(grant=signed_grant)
    await world.verifier.verify(client.signed_syn)
    assert await world.reason(client.signed_syn) is Reason.SYN_REPLAYED
    # The same grant with a fresh client nonce is a new connection, not a replay.
    assert await world.verifier.verify(world.syn(grant=signed_grant).signed_syn)


# --- step 6: the action -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_action_with_another_verb(world: World) -> None:
    raw = world.syn(mrzap_pb2.Exec(target_user="alice", command="id")).signed_syn
    assert await world.reason(raw) is Reason.ACTION_VERB_NOT_GRANTED


@pytest.mark.asyncio
async def test_action_as_another_user(world: World) -> None:
    raw = world.syn(mrzap_pb2.ShellOpen(target_user="root")).signed_syn
    assert await world.reason(raw) is Reason.ACTION_TARGET_USER_NOT_GRANTED


@pytest.mark.asyncio
async def test_tunnel_to_another_destination(world: World) -> None:
    granted = mrzap_pb2.Destination(host="127.0.0.1", port=5432)
    grant = world.grant(verb=mrzap_pb2.VERB_TUNNEL, target_user="", destination=granted)
    action = mrzap_pb2.TunnelOpen(destination=mrzap_pb2.Destination(host="127.0.0.1", port=22))
    raw = world.syn(action, grant=world.signer.sign(grant)).signed_syn
    assert await world.reason(raw) is Reason.ACTION_DESTINATION_NOT_GRANTED


@pytest.mark.asyncio
async def test_user_granted_but_not_allowed_by_the_agent(world: World) -> None:
    grant = world.grant(target_user="root")
    raw = world.syn(mrzap_pb2.ShellOpen(target_user="root"), grant=world.signer.sign(grant))
    assert await world.reason(raw.signed_syn) is Reason.ACTION_TARGET_USER_NOT_ALLOWED


@pytest.mark.asyncio
async def test_destination_granted_but_not_allowed_by_the_agent(world: World) -> None:
    granted = mrzap_pb2.Destination(host="10.0.0.1", port=22)
    grant = world.grant(verb=mrzap_pb2.VERB_TUNNEL, target_user="", destination=granted)
    raw = world.syn(mrzap_pb2.TunnelOpen(destination=granted), grant=world.signer.sign(grant))
    assert await world.reason(raw.signed_syn) is Reason.ACTION_DESTINATION_NOT_ALLOWED


@pytest.mark.asyncio
async def test_kube_groups_outside_the_grant(world: World) -> None:
    grant = world.grant(verb=mrzap_pb2.VERB_KUBE, target_user="alice", kube_groups=["dev"])
    action = mrzap_pb2.KubeOpen(target_user="alice", groups=["dev", "system:masters"])
    raw = world.syn(action, grant=world.signer.sign(grant)).signed_syn
    assert await world.reason(raw) is Reason.ACTION_TARGET_USER_NOT_GRANTED


# --- order of the checks ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_first_failed_check_is_reported(world: World) -> None:
    rogue = GrantSigner(keys.generate_signing_key(), "svc-rogue")
    thief = keys.generate_signing_key()
    raw = world.syn(
        mrzap_pb2.ShellOpen(target_user="root"), grant=rogue.sign(world.grant()), session_key=thief
    ).signed_syn
    assert await world.reason(raw) is Reason.GRANT_UNKNOWN_KEY


# --- the answers: SYN-ACK and Reject ------------------------------------------------------------


@pytest.mark.asyncio
async def test_synack_from_another_key_is_refused(world: World) -> None:
    client = world.syn()
    verified = await world.verifier.verify(client.signed_syn)
    impostor = accept_syn(verified, keys.generate_signing_key(), mrzap_pb2.ActionResult())
    with pytest.raises(VerificationError) as caught:
        verify_synack(client, impostor.signed_synack)
    assert caught.value.reason is Reason.BAD_SIGNATURE


@pytest.mark.asyncio
async def test_synack_for_another_syn_is_refused(world: World) -> None:
    first, second = world.syn(), world.syn()
    verified = await world.verifier.verify(first.signed_syn)
    answer = accept_syn(verified, world.agent_key, mrzap_pb2.ActionResult())
    with pytest.raises(VerificationError) as caught:
        verify_synack(second, answer.signed_synack)
    assert caught.value.reason is Reason.SYN_HASH_MISMATCH


@pytest.mark.asyncio
async def test_reject_carries_the_reason_to_the_client(world: World) -> None:
    client = world.syn(mrzap_pb2.ShellOpen(target_user="root"))
    with pytest.raises(VerificationError) as caught:
        await world.verifier.verify(client.signed_syn)
    raw = reject_syn(client.signed_syn, world.agent_key, caught.value)
    reject = verify_reject(client, raw)
    assert Reason.from_wire(reject.code) is Reason.ACTION_TARGET_USER_NOT_GRANTED
    assert "target user" in reject.message


def test_reject_forged_by_the_broker_is_refused(world: World) -> None:
    client = world.syn()
    error = VerificationError(Reason.GRANT_REVOKED, "made up")
    forged = reject_syn(client.signed_syn, keys.generate_signing_key(), error)
    with pytest.raises(VerificationError) as caught:
        verify_reject(client, forged)
    assert caught.value.reason is Reason.BAD_SIGNATURE
    genuine_for_other_syn = reject_syn(world.syn().signed_syn, world.agent_key, error)
    with pytest.raises(VerificationError) as other:
        verify_reject(client, genuine_for_other_syn)
    assert other.value.reason is Reason.SYN_HASH_MISMATCH


# --- any single-byte change ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_world(idp: TestIdentityProvider) -> World:
    """A world whose JWKS was fetched once, so hypothesis examples make no HTTP requests."""
    return World(idp, jwks=idp.static_jwks_source())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_of_a_signed_syn_is_rejected(
    static_world: World, data: st.DataObject
) -> None:
    world = static_world
    raw = bytearray(world.syn().signed_syn)
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    raw[index] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(VerificationError):
        asyncio.run(world.verifier.verify(bytes(raw)))
