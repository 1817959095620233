"""The agent's SYN answer: every check of PROTOCOL.md section 5 with the agent's own pins.

The IdP is a real OIDC provider on loopback whose JWKS the agent fetches over HTTP itself. Each
negative test asserts the reason code of a signed Reject and that the action was never started,
so removing any check makes its test fail.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent._config import AgentConfig, GrantKeyPin
from agent._local_policy import LocalPolicy
from agent._verifier import Accepted, Rejected, SynHandler
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.envelope import Domain, sign
from mrzap.errors import InvalidArgument
from mrzap.grant import GrantSigner, new_grant_id
from mrzap.handshake import ClientHandshake, VerifiedSyn, build_syn, verify_reject, verify_synack
from mrzap.testing import FixedClock, TestIdentityProvider
from mrzap.timestamps import to_timestamp
from mrzap.verification import Reason, VerificationError

TARGET = "target-1"
SHELL_ALICE = mrzap_pb2.ShellOpen(target_user="alice", term="xterm", cols=80, rows=24)
NOBODY_UID = 65534


class Agent:
    """A registered agent pinning one service key and the IdP, and alice logged in."""

    def __init__(self, idp: TestIdentityProvider, local: LocalPolicy | None = None) -> None:
        self.idp = idp
        # Whole seconds, so times survive the round trip through protobuf Timestamps exactly.
        self.clock = FixedClock(float(int(time.time())))
        self.service_key = keys.generate_signing_key()
        self.signer = GrantSigner(self.service_key, "svc-1")
        self.agent_key = keys.generate_signing_key()
        self.session_key = keys.generate_signing_key()
        config = AgentConfig(
            server="127.0.0.1:1",
            target_id=TARGET,
            org_id="org-1",
            name="web-1",
            grant_keys=(GrantKeyPin("svc-1", keys.public_key_bytes(self.service_key)),),
            idp=idp.config(client_id="zli"),
            ca_pem=None,
        )
        local = local or LocalPolicy.build(["alice", "bob"], [], uid=0)
        self.handler = SynHandler(config, self.agent_key, local, clock=self.clock)
        self.started: list[VerifiedSyn] = []

    def token(self, key: Ed25519PrivateKey, sub: str = "alice-sub") -> mrzap_pb2.PkToken:
        return self.idp.pk_token(keys.public_key_bytes(key), sub=sub, issued_at=self.clock.now())

    def grant(self, **fields: object) -> mrzap_pb2.Grant:
        now = self.clock.now()
        grant = mrzap_pb2.Grant(
            grant_id=new_grant_id(),
            org_id="org-1",
            subject=mrzap_pb2.Subject(iss=self.idp.issuer, sub="alice-sub"),
            upk=keys.public_key_bytes(self.session_key),
            target_id=TARGET,
            target_public_key=keys.public_key_bytes(self.agent_key),
            verb=mrzap_pb2.VERB_SHELL,
            target_user="alice",
            not_before=to_timestamp(now - 1),
            start_by=to_timestamp(now + 60),
            session_expires_at=to_timestamp(now + 3600),
        )
        for name, value in fields.items():
            if isinstance(value, float):
                getattr(grant, name).CopyFrom(to_timestamp(value))
            elif isinstance(value, mrzap_pb2.Subject):
                getattr(grant, name).CopyFrom(value)
            else:
                setattr(grant, name, value)
        return grant

    def syn(
        self,
        action: mrzap_pb2.ShellOpen | mrzap_pb2.Exec = SHELL_ALICE,
        *,
        grant: mrzap_pb2.Signed | None = None,
        session_key: Ed25519PrivateKey | None = None,
        token: mrzap_pb2.PkToken | None = None,
        clock: FixedClock | None = None,
    ) -> ClientHandshake:
        return build_syn(
            session_key=session_key or self.session_key,
            pk_token=token or self.token(self.session_key),
            signed_grant=grant or self.signer.sign(self.grant()),
            channel_id="channel-1",
            action=action,
            clock=clock or self.clock,
        )

    async def start(self, verified: VerifiedSyn) -> mrzap_pb2.ActionResult:
        self.started.append(verified)
        return mrzap_pb2.ActionResult(connection_id="conn-1", pid=4242)

    async def rejected(self, handshake: ClientHandshake) -> Reason:
        """The reason of the agent's Reject, as the client verifies it; nothing started."""
        answer = await self.handler.answer(handshake.signed_syn, self.start)
        assert isinstance(answer, Rejected), answer
        reject = verify_reject(handshake, answer.signed_reject)
        assert Reason.from_wire(reject.code) is answer.error.reason
        assert self.started == []
        return answer.error.reason


@pytest.fixture
def agent(idp: TestIdentityProvider) -> Agent:
    return Agent(idp)


@pytest.mark.asyncio
async def test_valid_syn_starts_the_action_and_gives_a_synack(agent: Agent) -> None:
    handshake = agent.syn()
    answer = await agent.handler.answer(handshake.signed_syn, agent.start)
    assert isinstance(answer, Accepted)
    established = verify_synack(handshake, answer.signed_synack)
    assert established.synack.result.pid == 4242
    assert established.keys == answer.keys
    assert [v.grant.target_user for v in agent.started] == ["alice"]
    assert agent.handler.still_valid(answer.verified)


@pytest.mark.asyncio
async def test_oversized_syn(agent: Agent) -> None:
    answer = await agent.handler.answer(b"\0" * (64 * 1024 + 1), agent.start)
    assert isinstance(answer, Rejected)
    assert answer.error.reason is Reason.TOO_LARGE
    assert agent.started == []


# --- step 2: the service root, under the keys pinned in agent.toml ----------------------------


@pytest.mark.asyncio
async def test_grant_signed_by_an_unpinned_key(agent: Agent) -> None:
    forged = GrantSigner(keys.generate_signing_key(), "svc-evil").sign(agent.grant())
    assert await agent.rejected(agent.syn(grant=forged)) is Reason.GRANT_UNKNOWN_KEY


@pytest.mark.asyncio
async def test_grant_signed_by_another_key_under_the_pinned_id(agent: Agent) -> None:
    forged = GrantSigner(keys.generate_signing_key(), "svc-1").sign(agent.grant())
    assert await agent.rejected(agent.syn(grant=forged)) is Reason.GRANT_BAD_SIGNATURE


@pytest.mark.asyncio
async def test_grant_used_after_start_by(agent: Agent) -> None:
    signed = agent.signer.sign(agent.grant())
    agent.clock.advance(61)
    assert await agent.rejected(agent.syn(grant=signed)) is Reason.GRANT_START_BY_PASSED


@pytest.mark.asyncio
async def test_grant_for_another_target(agent: Agent) -> None:
    signed = agent.signer.sign(agent.grant(target_id="target-2"))
    assert await agent.rejected(agent.syn(grant=signed)) is Reason.GRANT_WRONG_TARGET


@pytest.mark.asyncio
async def test_grant_whose_session_has_ended(agent: Agent) -> None:
    grant = agent.grant(key_id="svc-1", session_expires_at=agent.clock.now() - 1)
    signed = sign(agent.service_key, Domain.GRANT, grant.SerializeToString(), "svc-1")
    assert await agent.rejected(agent.syn(grant=signed)) is Reason.GRANT_SESSION_EXPIRED


@pytest.mark.asyncio
async def test_revoked_grant(agent: Agent) -> None:
    grant = agent.grant()
    revocation = mrzap_pb2.Revocation(revocation_id="r-1", grant_ids=[grant.grant_id])
    agent.handler.add_revocation(
        sign(agent.service_key, Domain.REVOCATION, revocation.SerializeToString(), "svc-1")
    )
    signed = agent.signer.sign(grant)
    assert await agent.rejected(agent.syn(grant=signed)) is Reason.GRANT_REVOKED


def test_revocation_under_an_unpinned_key_is_refused(agent: Agent) -> None:
    revocation = mrzap_pb2.Revocation(revocation_id="r-1", grant_ids=["g"])
    evil = keys.generate_signing_key()
    with pytest.raises(VerificationError) as caught:
        agent.handler.add_revocation(
            sign(evil, Domain.REVOCATION, revocation.SerializeToString(), "svc-evil")
        )
    assert caught.value.reason is Reason.UNKNOWN_KEY


# --- step 3: the IdP root, fetched from the pinned issuer ---------------------------------------


@pytest.mark.asyncio
async def test_service_grants_its_own_key_with_the_users_token(agent: Agent) -> None:
    service_session = keys.generate_signing_key()
    grant = agent.signer.sign(agent.grant(upk=keys.public_key_bytes(service_session)))
    handshake = agent.syn(
        grant=grant, session_key=service_session, token=agent.token(agent.session_key)
    )
    assert await agent.rejected(handshake) is Reason.TOKEN_UPK_MISMATCH


@pytest.mark.asyncio
async def test_token_of_another_user(agent: Agent) -> None:
    token = agent.token(agent.session_key, sub="bob-sub")
    assert await agent.rejected(agent.syn(token=token)) is Reason.TOKEN_SUBJECT_MISMATCH


@pytest.mark.asyncio
async def test_token_from_an_identity_provider_that_is_not_pinned(agent: Agent) -> None:
    with TestIdentityProvider() as other:
        token = other.pk_token(
            keys.public_key_bytes(agent.session_key), issued_at=agent.clock.now()
        )
    # The key is looked up under the pinned issuer only, where it does not verify.
    assert await agent.rejected(agent.syn(token=token)) is Reason.TOKEN_BAD_SIGNATURE


@pytest.mark.asyncio
async def test_expired_token(agent: Agent) -> None:
    token = agent.token(agent.session_key)
    agent.clock.advance(3600)
    grant = agent.signer.sign(agent.grant())
    assert await agent.rejected(agent.syn(grant=grant, token=token)) is Reason.TOKEN_EXPIRED


# --- step 4: the client's own signature ---------------------------------------------------------


@pytest.mark.asyncio
async def test_stolen_grant_and_token_signed_with_another_key(agent: Agent) -> None:
    thief = keys.generate_signing_key()
    handshake = agent.syn(session_key=thief)
    assert await agent.rejected(handshake) is Reason.SYN_BAD_SIGNATURE


@pytest.mark.asyncio
async def test_syn_outside_the_clock_window(agent: Agent) -> None:
    skewed = FixedClock(agent.clock.now() + 121)
    assert await agent.rejected(agent.syn(clock=skewed)) is Reason.SYN_CLOCK_SKEW


# --- step 5: replay -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_replayed_syn(agent: Agent) -> None:
    handshake = agent.syn()
    first = await agent.handler.answer(handshake.signed_syn, agent.start)
    assert isinstance(first, Accepted)
    agent.started.clear()
    assert await agent.rejected(handshake) is Reason.SYN_REPLAYED


# --- step 6: the action inside the grant and inside the agent's own policy -------------------


@pytest.mark.asyncio
async def test_action_with_another_verb(agent: Agent) -> None:
    action = mrzap_pb2.Exec(target_user="alice", command="id")
    assert await agent.rejected(agent.syn(action)) is Reason.ACTION_VERB_NOT_GRANTED


@pytest.mark.asyncio
async def test_action_as_another_user_than_granted(agent: Agent) -> None:
    action = mrzap_pb2.ShellOpen(target_user="root")
    assert await agent.rejected(agent.syn(action)) is Reason.ACTION_TARGET_USER_NOT_GRANTED


@pytest.mark.asyncio
async def test_user_granted_but_not_served_by_this_agent(agent: Agent) -> None:
    grant = agent.signer.sign(agent.grant(target_user="root"))
    action = mrzap_pb2.ShellOpen(target_user="root")
    handshake = agent.syn(action, grant=grant)
    assert await agent.rejected(handshake) is Reason.ACTION_TARGET_USER_NOT_ALLOWED


@pytest.mark.asyncio
async def test_agent_not_running_as_root_says_so(idp: TestIdentityProvider) -> None:
    agent = Agent(idp, LocalPolicy.build(["*"], [], uid=NOBODY_UID))
    answer = await agent.handler.answer(agent.syn().signed_syn, agent.start)
    assert isinstance(answer, Rejected)
    assert answer.error.reason is Reason.ACTION_TARGET_USER_NOT_ALLOWED
    assert "not root" in answer.error.detail
    assert "nobody" in answer.error.detail
    assert agent.started == []


@pytest.mark.asyncio
async def test_action_that_cannot_start_is_rejected(agent: Agent) -> None:
    async def no_such_user(verified: VerifiedSyn) -> mrzap_pb2.ActionResult:
        raise VerificationError(Reason.ACTION_TARGET_USER_NOT_ALLOWED, "no user alice here")

    handshake = agent.syn()
    answer = await agent.handler.answer(handshake.signed_syn, no_such_user)
    assert isinstance(answer, Rejected)
    assert verify_reject(handshake, answer.signed_reject).message == "no user alice here"


# --- while the connection runs ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_running_connection_ends_at_session_expiry(agent: Agent) -> None:
    answer = await agent.handler.answer(agent.syn().signed_syn, agent.start)
    assert isinstance(answer, Accepted)
    agent.clock.advance(3599)
    assert agent.handler.still_valid(answer.verified)
    agent.clock.advance(1)
    assert not agent.handler.still_valid(answer.verified)


@pytest.mark.asyncio
async def test_running_connection_ends_when_its_user_is_locked(agent: Agent) -> None:
    answer = await agent.handler.answer(agent.syn().signed_syn, agent.start)
    assert isinstance(answer, Accepted)
    agent.clock.advance(5)
    revocation = mrzap_pb2.Revocation(
        revocation_id="lock-alice",
        subjects=[mrzap_pb2.Subject(iss=agent.idp.issuer, sub="alice-sub")],
        before=to_timestamp(agent.clock.now()),
    )
    agent.handler.add_revocation(
        sign(agent.service_key, Domain.REVOCATION, revocation.SerializeToString(), "svc-1")
    )
    assert not agent.handler.still_valid(answer.verified)


# --- the agent's local policy file -------------------------------------------------------------


def test_root_agent_without_a_policy_file_serves_every_user(tmp_path: Path) -> None:
    local = LocalPolicy.from_file(tmp_path / "local-policy.toml", uid=0)
    assert local.allows_user("deploy")
    assert local.running_as is None
    assert not local.policy.allows_destination("127.0.0.1", 22)


def test_policy_file_limits_users_and_destinations(tmp_path: Path) -> None:
    path = tmp_path / "local-policy.toml"
    path.write_text('target_users = ["deploy"]\ntunnel_destinations = ["127.0.0.1:5432"]\n')
    local = LocalPolicy.from_file(path, uid=0)
    assert local.allows_user("deploy")
    assert not local.allows_user("root")
    assert local.policy.allows_destination("127.0.0.1", 5432)
    assert not local.policy.allows_destination("127.0.0.1", 22)


def test_non_root_agent_serves_only_its_own_user(tmp_path: Path) -> None:
    path = tmp_path / "local-policy.toml"
    path.write_text('target_users = ["nobody", "deploy"]\n')
    local = LocalPolicy.from_file(path, uid=NOBODY_UID)
    assert local.allows_user("nobody")
    assert not local.allows_user("deploy")
    assert local.ignored_users == {"deploy"}
    assert "runs as 'nobody', not root" in local.refusal("deploy")


@pytest.mark.parametrize(
    "text",
    [
        "target_users = 'alice'\n",
        "target_users = [1]\n",
        "target_user = ['alice']\n",
        "tunnel_destinations = ['no-port']\n",
        "target_users = [\n",
    ],
)
def test_bad_policy_file_is_refused_with_its_name(tmp_path: Path, text: str) -> None:
    path = tmp_path / "local-policy.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=r"local-policy\.toml"):
        LocalPolicy.from_file(path, uid=0)


@pytest.mark.asyncio
async def test_agent_fetches_the_pinned_jwks_once_for_many_syns(agent: Agent) -> None:
    before = agent.idp.jwks_requests
    for _ in range(3):
        handshake = agent.syn()
        assert isinstance(await agent.handler.answer(handshake.signed_syn, agent.start), Accepted)
    assert agent.idp.jwks_requests - before == 1
