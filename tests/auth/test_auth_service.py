"""The auth role's domain: login with PK tokens, MFA, sessions, refresh and administrators.

Runs on a real SQLite database migrated by Alembic, with ID tokens signed by real keys whose JWKS
is served over HTTP on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pyotp
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth import MIGRATIONS, AuthConfig, AuthService, AuthStore, OrgControls
from auth._domain import LoginResult, MfaStatus, SessionInfo
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from mrzap.jwks import HttpJwksSource
from mrzap.login_proof import sign_login_proof
from mrzap.pktoken import PkTokenVerifier
from mrzap.storage import Database
from mrzap.testing import FixedClock, TestIdentityProvider

START = 1_900_000_000.0


class Org:
    """An organisation's auth role on a fresh database."""

    def __init__(self, idp: TestIdentityProvider, db: Database, **config: object) -> None:
        self.idp = idp
        self.clock = FixedClock(START)
        controls = config.pop("controls", OrgControls())
        self.config = AuthConfig(
            idp=idp.config(client_id="zli", max_session_age_s=3600.0),
            admin_emails=frozenset({"admin@example.com"}),
            admin_groups=frozenset({"ops"}),
            controls=controls,  # type: ignore[arg-type]
        )
        tokens = PkTokenVerifier(self.config.idp, HttpJwksSource(), self.clock)
        self.auth = AuthService(self.config, AuthStore(db), tokens, self.clock)

    def token(
        self, key: Ed25519PrivateKey, sub: str = "alice-sub", **claims: object
    ) -> mrzap_pb2.PkToken:
        email = str(claims.pop("email", f"{sub.removesuffix('-sub')}@example.com"))
        return self.idp.pk_token(
            keys.public_key_bytes(key),
            sub=sub,
            email=email,
            issued_at=self.clock.now(),
            lifetime_s=600,
            extra_claims=claims or None,
        )

    async def login(
        self, key: Ed25519PrivateKey | None = None, sub: str = "alice-sub", **claims: object
    ) -> LoginResult:
        key = key or keys.generate_signing_key()
        token = self.token(key, sub, **claims)
        timestamp_ms = round(self.clock.now() * 1000)
        proof = sign_login_proof(key, "login", token, timestamp_ms)
        return await self.auth.login(token, timestamp_ms, proof)

    def code(self, secret: str) -> str:
        return pyotp.TOTP(secret).at(self.clock.now())

    async def enrolled(self, sub: str = "alice-sub") -> tuple[SessionInfo, str, str]:
        """A logged-in user with MFA done; returns the session, its token and the TOTP secret."""
        result = await self.login(sub=sub)
        enrolment = await self.auth.enroll_mfa(result.info)
        info = await self.auth.verify_mfa(result.info, self.code(enrolment.secret))
        return info, result.token, enrolment.secret


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    database.migrate([MIGRATIONS])
    yield database
    await database.close()


@pytest.fixture
def org(idp: TestIdentityProvider, db: Database) -> Org:
    return Org(idp, db)


@pytest.mark.asyncio
async def test_first_login_creates_the_user_and_needs_enrolment(org: Org) -> None:
    result = await org.login()
    assert result.info.user.email == "alice@example.com"
    assert result.info.mfa is MfaStatus.ENROLMENT_REQUIRED
    assert not result.info.is_admin
    with pytest.raises(Unauthenticated, match="MFA"):
        await org.auth.authenticate(result.token)
    pending = await org.auth.authenticate(result.token, allow_mfa_pending=True)
    assert pending.session.id == result.info.session.id


@pytest.mark.asyncio
async def test_enrolment_then_verification_opens_the_session(org: Org) -> None:
    info, token, secret = await org.enrolled()
    assert info.mfa is MfaStatus.DONE
    assert (await org.auth.authenticate(token)).user.id == info.user.id
    # The next login needs a code, not a new enrolment.
    org.clock.advance(60)
    second = await org.login()
    assert second.info.mfa is MfaStatus.VERIFICATION_REQUIRED
    with pytest.raises(FailedPrecondition):
        await org.auth.enroll_mfa(second.info)
    done = await org.auth.verify_mfa(second.info, org.code(secret))
    assert done.mfa is MfaStatus.DONE


@pytest.mark.asyncio
async def test_wrong_code_is_refused(org: Org) -> None:
    result = await org.login()
    await org.auth.enroll_mfa(result.info)
    with pytest.raises(Unauthenticated, match="wrong"):
        await org.auth.verify_mfa(result.info, "000000")


@pytest.mark.asyncio
async def test_a_code_works_once(org: Org) -> None:
    _, _, secret = await org.enrolled()
    second = await org.login()
    code = org.code(secret)  # the same time step as the enrolment's code
    with pytest.raises(Unauthenticated, match="used already"):
        await org.auth.verify_mfa(second.info, code)
    org.clock.advance(30)
    assert (await org.auth.verify_mfa(second.info, org.code(secret))).mfa is MfaStatus.DONE


@pytest.mark.asyncio
async def test_five_failures_lock_with_growing_back_off(org: Org) -> None:
    _, _, secret = await org.enrolled()
    org.clock.advance(30)
    second = await org.login()
    for _ in range(4):
        with pytest.raises(Unauthenticated):
            await org.auth.verify_mfa(second.info, "000000")
    with pytest.raises(ResourceExhausted, match="locked for 30 s"):
        await org.auth.verify_mfa(second.info, "000000")
    # While locked even the right code is refused.
    with pytest.raises(ResourceExhausted):
        await org.auth.verify_mfa(second.info, org.code(secret))
    org.clock.advance(31)
    with pytest.raises(ResourceExhausted, match="locked for 60 s"):
        await org.auth.verify_mfa(second.info, "000000")
    org.clock.advance(61)
    assert (await org.auth.verify_mfa(second.info, org.code(secret))).mfa is MfaStatus.DONE


@pytest.mark.asyncio
async def test_admin_resets_mfa_and_ends_the_users_sessions(org: Org) -> None:
    alice, alice_token, _ = await org.enrolled()
    admin, _, _ = await org.enrolled(sub="admin-sub")
    assert admin.is_admin
    with pytest.raises(PermissionDenied):
        await org.auth.reset_mfa(alice, "admin@example.com")
    with pytest.raises(NotFound):
        await org.auth.reset_mfa(admin, "nobody@example.com")
    assert (await org.auth.reset_mfa(admin, "alice@example.com")).id == alice.user.id
    with pytest.raises(Unauthenticated):
        await org.auth.authenticate(alice_token)
    assert (await org.login()).info.mfa is MfaStatus.ENROLMENT_REQUIRED


@pytest.mark.asyncio
async def test_administrators_by_group_and_never_by_unverified_email(org: Org) -> None:
    assert (await org.login(sub="bob-sub", groups=["ops"])).info.is_admin
    spoof = await org.login(sub="mallory-sub", email="admin@example.com", email_verified=False)
    assert not spoof.info.is_admin


@pytest.mark.asyncio
async def test_session_expires_with_its_id_token(org: Org) -> None:
    _, token, _ = await org.enrolled()
    org.clock.advance(601)
    with pytest.raises(Unauthenticated, match="expired"):
        await org.auth.authenticate(token)


@pytest.mark.asyncio
async def test_refresh_extends_until_the_maximum_age(org: Org) -> None:
    key = keys.generate_signing_key()
    result = await org.login(key)
    enrolment = await org.auth.enroll_mfa(result.info)
    info = await org.auth.verify_mfa(result.info, org.code(enrolment.secret))
    first = org.token(key)

    async def refresh() -> SessionInfo:
        token = mrzap_pb2.PkToken()
        token.CopyFrom(first)
        token.refreshed_id_token = org.idp.refreshed_token(
            sub="alice-sub", issued_at=org.clock.now(), lifetime_s=600
        )
        timestamp_ms = round(org.clock.now() * 1000)
        proof = sign_login_proof(key, "refresh", token, timestamp_ms)
        return await org.auth.refresh(info, token, timestamp_ms, proof)

    org.clock.advance(500)
    refreshed = await refresh()
    assert refreshed.session.expires_at == pytest.approx(org.clock.now() + 600)
    org.clock.advance(400)  # past the first token's expiry
    assert (await org.auth.authenticate(result.token)).session.id == info.session.id
    org.clock.advance(1000)  # past the refreshed token's expiry too: only refreshing works
    with pytest.raises(Unauthenticated, match="expired"):
        await org.auth.authenticate(result.token)
    assert await org.auth.authenticate(result.token, allow_expired=True)
    await refresh()
    assert (await org.auth.authenticate(result.token)).session.id == info.session.id
    org.clock.advance(1701)  # past the maximum session age of one hour
    with pytest.raises(Unauthenticated, match="maximum age"):
        await refresh()


@pytest.mark.asyncio
async def test_login_needs_the_session_keys_signature(org: Org) -> None:
    key = keys.generate_signing_key()
    token = org.token(key)
    timestamp_ms = round(org.clock.now() * 1000)
    thief = keys.generate_signing_key()
    with pytest.raises(Unauthenticated, match="not signed"):
        await org.auth.login(
            token, timestamp_ms, sign_login_proof(thief, "login", token, timestamp_ms)
        )
    wrong_purpose = sign_login_proof(key, "refresh", token, timestamp_ms)
    with pytest.raises(Unauthenticated, match="not signed"):
        await org.auth.login(token, timestamp_ms, wrong_purpose)


@pytest.mark.asyncio
async def test_login_request_cannot_be_replayed(org: Org) -> None:
    key = keys.generate_signing_key()
    token = org.token(key)
    timestamp_ms = round(org.clock.now() * 1000)
    proof = sign_login_proof(key, "login", token, timestamp_ms)
    await org.auth.login(token, timestamp_ms, proof)
    with pytest.raises(Unauthenticated, match="used before"):
        await org.auth.login(token, timestamp_ms, proof)


@pytest.mark.asyncio
async def test_login_with_a_skewed_clock(org: Org) -> None:
    key = keys.generate_signing_key()
    token = org.token(key)
    timestamp_ms = round((org.clock.now() - 300) * 1000)
    proof = sign_login_proof(key, "login", token, timestamp_ms)
    with pytest.raises(Unauthenticated, match="clock"):
        await org.auth.login(token, timestamp_ms, proof)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil.example.com"}, "TOKEN_WRONG_ISSUER"),
        ({"aud": "another-client"}, "TOKEN_WRONG_AUDIENCE"),
        ({"nonce": "not-the-commitment"}, "TOKEN_NONCE_MISMATCH"),
    ],
)
async def test_login_refuses_foreign_or_unbound_tokens(
    org: Org, claims: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        await org.login(None, "alice-sub", **claims)


@pytest.mark.asyncio
async def test_mfa_not_required_by_the_organisation(
    idp: TestIdentityProvider, db: Database
) -> None:
    org = Org(idp, db, controls=OrgControls(mfa_required=False))
    result = await org.login()
    assert result.info.mfa is MfaStatus.DONE
    assert await org.auth.authenticate(result.token)


@pytest.mark.asyncio
async def test_logout_ends_the_session(org: Org) -> None:
    info, token, _ = await org.enrolled()
    await org.auth.logout(info)
    with pytest.raises(Unauthenticated, match="not logged in"):
        await org.auth.authenticate(token)
    with pytest.raises(Unauthenticated, match="not logged in"):  # not even to refresh it
        await org.auth.authenticate(token, allow_expired=True)


@pytest.mark.asyncio
async def test_users_are_listed_in_pages_by_email(org: Org) -> None:
    for name in ("carol", "alice", "bob"):
        await org.login(sub=f"{name}-sub")
    first, token = await org.auth.list_users(2, "")
    assert [user.email for user, _ in first] == ["alice@example.com", "bob@example.com"]
    rest, last = await org.auth.list_users(2, token)
    assert [user.email for user, _ in rest] == ["carol@example.com"]
    assert last == ""
    with pytest.raises(InvalidArgument):
        await org.auth.list_users(2, "not-a-token")
