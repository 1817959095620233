"""API keys in the auth role's domain, on SQLite and PostgreSQL: creation, secrecy, expiry,
revocation, paging, and who may do what.

The creators are real users who logged in with PK tokens signed by a test IdP on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pyotp
import pytest
import pytest_asyncio
from sqlalchemy import text

from auth import MIGRATIONS, AuthConfig, AuthService, AuthStore, Caller, looks_like_api_key
from auth._api_keys import LAST_USE_PRECISION_S
from mrzap import keys
from mrzap.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from mrzap.jwks import HttpJwksSource
from mrzap.login_proof import sign_login_proof
from mrzap.pktoken import PkTokenVerifier
from mrzap.storage import Database
from mrzap.testing import FixedClock, TestIdentityProvider

START = 1_900_000_000.0
DAY = 86400.0


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    database.migrate([MIGRATIONS])
    yield database
    await database.close()


class Org:
    """The auth role of an organisation whose administrator is admin@example.com."""

    def __init__(self, idp: TestIdentityProvider, db: Database) -> None:
        self.idp = idp
        self.db = db
        self.clock = FixedClock(START)
        config = AuthConfig(
            idp=idp.config(client_id="zli", max_session_age_s=3600.0),
            admin_emails=frozenset({"admin@example.com"}),
        )
        tokens = PkTokenVerifier(config.idp, HttpJwksSource(), self.clock)
        self.auth = AuthService(config, AuthStore(db), tokens, self.clock)

    async def person(self, sub: str) -> Caller:
        """A user who logged in and passed MFA."""
        key = keys.generate_signing_key()
        token = self.idp.pk_token(
            keys.public_key_bytes(key),
            sub=sub,
            email=f"{sub}@example.com",
            issued_at=self.clock.now(),
            lifetime_s=600,
        )
        stamp = round(self.clock.now() * 1000)
        login = await self.auth.login(token, stamp, sign_login_proof(key, "login", token, stamp))
        enrolment = await self.auth.enroll_mfa(login.info)
        code = pyotp.TOTP(enrolment.secret).at(self.clock.now())
        await self.auth.verify_mfa(login.info, code)
        return await self.auth.authenticate_caller(login.token)


@pytest_asyncio.fixture
async def org(idp: TestIdentityProvider, db: Database) -> Org:
    return Org(idp, db)


@pytest_asyncio.fixture
async def admin(org: Org) -> Caller:
    caller = await org.person("admin")
    assert caller.is_admin
    return caller


@pytest.mark.asyncio
async def test_a_new_key_shows_its_secret_once_and_stores_only_its_hash(
    org: Org, admin: Caller
) -> None:
    key, secret = await org.auth.api_keys.create(admin, " ci deploy ", admin=False, ttl_s=0)
    assert secret.startswith(key.id + "_")
    assert key.id.startswith("mzk_")
    assert looks_like_api_key(secret)
    assert (key.name, key.admin, key.expires_at, key.last_used_at) == (
        "ci deploy",
        False,
        None,
        None,
    )
    assert key.creator_user_id == admin.user_id
    async with org.db.session() as s:
        rows = (await s.execute(text("SELECT * FROM auth_api_keys"))).all()
    assert len(rows) == 1
    stored = repr(rows[0])
    assert secret.split("_", 2)[2] not in stored  # the secret part is nowhere in the row
    listed, next_token = await org.auth.api_keys.list(0, "")
    assert (listed, next_token) == ([key], "")


@pytest.mark.asyncio
async def test_a_key_authenticates_with_the_rights_it_was_given(org: Org, admin: Caller) -> None:
    user_key, user_secret = await org.auth.api_keys.create(admin, "reader", admin=False, ttl_s=0)
    admin_key, admin_secret = await org.auth.api_keys.create(admin, "ops", admin=True, ttl_s=0)
    reader = await org.auth.authenticate_caller(user_secret)
    assert (reader.is_admin, reader.api_key_id, reader.user_id) == (False, user_key.id, "")
    assert reader.session is None
    assert reader.display_name == f"API key 'reader' ({user_key.id})"
    ops = await org.auth.authenticate_caller(admin_secret)
    assert (ops.is_admin, ops.api_key_id) == (True, admin_key.id)


@pytest.mark.asyncio
async def test_last_use_is_recorded_without_a_write_per_call(org: Org, admin: Caller) -> None:
    _, secret = await org.auth.api_keys.create(admin, "busy", admin=False, ttl_s=0)

    async def last_use() -> float | None:
        return (await org.auth.api_keys.list(0, ""))[0][0].last_used_at

    await org.auth.api_keys.authenticate(secret)
    assert await last_use() == START
    org.clock.advance(LAST_USE_PRECISION_S / 2)
    await org.auth.api_keys.authenticate(secret)
    assert await last_use() == START
    org.clock.advance(LAST_USE_PRECISION_S)
    await org.auth.api_keys.authenticate(secret)
    assert await last_use() == START + 1.5 * LAST_USE_PRECISION_S


@pytest.mark.asyncio
async def test_a_key_stops_working_when_it_expires(org: Org, admin: Caller) -> None:
    _, secret = await org.auth.api_keys.create(admin, "nightly", admin=True, ttl_s=30 * DAY)
    org.clock.advance(30 * DAY - 1)
    assert (await org.auth.api_keys.authenticate(secret)).is_admin
    org.clock.advance(1)
    with pytest.raises(Unauthenticated, match=r"expired at 2030-\d\d-\d\d"):
        await org.auth.api_keys.authenticate(secret)
    # An expired key is still listed (so an administrator sees it) until it is revoked.
    assert len((await org.auth.api_keys.list(0, ""))[0]) == 1


@pytest.mark.asyncio
async def test_a_revoked_key_stops_working_at_once(org: Org, admin: Caller) -> None:
    key, secret = await org.auth.api_keys.create(admin, "leaked", admin=True, ttl_s=0)
    kept, kept_secret = await org.auth.api_keys.create(admin, "kept", admin=False, ttl_s=0)
    await org.auth.api_keys.revoke(admin, key.id)
    with pytest.raises(Unauthenticated, match=f"{key.id} was revoked"):
        await org.auth.authenticate_caller(secret)
    assert [k.id for k in (await org.auth.api_keys.list(0, ""))[0]] == [kept.id]
    with pytest.raises(NotFound, match="revoked already"):
        await org.auth.api_keys.revoke(admin, key.id)
    assert (await org.auth.authenticate_caller(kept_secret)).api_key_id == kept.id


@pytest.mark.asyncio
async def test_wrong_and_malformed_secrets_are_refused(org: Org, admin: Caller) -> None:
    key, secret = await org.auth.api_keys.create(admin, "real", admin=True, ttl_s=0)
    tail = secret.removeprefix(key.id + "_")
    forged = f"{key.id}_{'A' if tail[0] != 'A' else 'B'}{tail[1:]}"  # right id, wrong secret
    unknown = f"mzk_{'0' * 16}_{tail}"  # right secret, another id
    for bad in (forged, unknown, secret[:-1], secret + "x", key.id):
        with pytest.raises(Unauthenticated, match="not valid"):
            await org.auth.api_keys.authenticate(bad)


@pytest.mark.asyncio
async def test_only_administrators_with_a_session_create_keys(org: Org, admin: Caller) -> None:
    user = await org.person("bob")
    with pytest.raises(PermissionDenied, match="only administrators"):
        await org.auth.api_keys.create(user, "mine", admin=False, ttl_s=0)
    _, secret = await org.auth.api_keys.create(admin, "ops", admin=True, ttl_s=0)
    ops = await org.auth.authenticate_caller(secret)
    # A leaked administrator key must not be able to mint keys that outlive its revocation.
    with pytest.raises(PermissionDenied, match="API keys cannot create API keys"):
        await org.auth.api_keys.create(ops, "backdoor", admin=True, ttl_s=0)
    reader_key, reader_secret = await org.auth.api_keys.create(admin, "r", admin=False, ttl_s=0)
    reader = await org.auth.authenticate_caller(reader_secret)
    with pytest.raises(PermissionDenied, match="only administrators"):
        await org.auth.api_keys.revoke(reader, reader_key.id)
    await org.auth.api_keys.revoke(ops, reader_key.id)  # an administrator's key may revoke


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "ttl_s", "message"),
    [
        ("", 0, "needs a name"),
        ("   ", 0, "needs a name"),
        ("x" * 101, 0, "at most 100"),
        ("tab\there", 0, "printable"),
        ("ok", -1, "lifetime"),
        ("ok", 11 * 365 * DAY, "lifetime"),
    ],
)
async def test_bad_requests_are_refused_and_store_nothing(
    org: Org, admin: Caller, name: str, ttl_s: float, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await org.auth.api_keys.create(admin, name, admin=False, ttl_s=ttl_s)
    assert (await org.auth.api_keys.list(0, ""))[0] == []


@pytest.mark.asyncio
async def test_revoking_needs_a_key_id(org: Org, admin: Caller) -> None:
    with pytest.raises(InvalidArgument, match="not an API key id"):
        await org.auth.api_keys.revoke(admin, "ci deploy")
    with pytest.raises(NotFound):
        await org.auth.api_keys.revoke(admin, "mzk_" + "0" * 16)


@pytest.mark.asyncio
async def test_keys_are_listed_by_name_in_pages(org: Org, admin: Caller) -> None:
    created = [
        (await org.auth.api_keys.create(admin, name, admin=False, ttl_s=0))[0]
        for name in ("c", "a", "b", "a")
    ]
    seen, token = [], ""
    while True:
        page, token = await org.auth.api_keys.list(3, token)
        seen.extend(page)
        if not token:
            break
    assert [k.name for k in seen] == ["a", "a", "b", "c"]
    assert {k.id for k in seen} == {k.id for k in created}
    with pytest.raises(InvalidArgument):
        await org.auth.api_keys.list(0, "not-a-token")
