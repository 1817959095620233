"""Locking users in the auth role: a locked user cannot log in, refresh or use a session.

Runs the real domain on SQLite and PostgreSQL migrated by Alembic, with ID tokens signed by real
keys (the `Org` helper of test_auth_service).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from auth import LOCKED_MESSAGE, MIGRATIONS, AuthStore, Caller
from auth._api_key_store import ApiKey
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from mrzap.login_proof import sign_login_proof
from mrzap.storage import Database
from mrzap.testing import TestIdentityProvider

from .test_auth_service import Org


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
async def test_a_lock_ends_sessions_and_refuses_login_until_unlocked(
    org: Org, db: Database
) -> None:
    alice, alice_token, secret = await org.enrolled()
    admin, _, _ = await org.enrolled(sub="admin-sub")

    locked = await org.auth.lock_user(admin, "alice@example.com", "  laptop stolen ")
    assert locked.id == alice.user.id
    assert locked.lock is not None
    assert (locked.lock.locked_by, locked.lock.reason) == ("admin@example.com", "laptop stolen")
    assert locked.lock.locked_at == org.clock.now()

    # The existing session fails at once, for every access class, with the lock's message.
    for options in ({}, {"allow_mfa_pending": True}, {"allow_expired": True}):
        with pytest.raises(PermissionDenied, match=LOCKED_MESSAGE):
            await org.auth.authenticate(alice_token, **options)
    with pytest.raises(PermissionDenied, match=LOCKED_MESSAGE):
        await org.login()
    assert (
        await AuthStore(db).find_user("alice@example.com")
    ) == locked  # the refusal changed nothing

    unlocked = await org.auth.unlock_user(admin, alice.user.id)
    assert not unlocked.locked
    # The session the lock ended stays ended; a new login works (MFA as before).
    with pytest.raises(Unauthenticated, match="not logged in"):
        await org.auth.authenticate(alice_token)
    org.clock.advance(30)  # the next TOTP code: each code works once
    again = await org.login()
    assert again.info.user.id == alice.user.id
    verified = await org.auth.verify_mfa(again.info, org.code(secret))
    assert (await org.auth.authenticate(again.token)).session.id == verified.session.id


@pytest.mark.asyncio
async def test_a_locked_user_cannot_refresh(org: Org) -> None:
    key = keys.generate_signing_key()
    result = await org.login(key)
    enrolment = await org.auth.enroll_mfa(result.info)
    info = await org.auth.verify_mfa(result.info, org.code(enrolment.secret))
    admin, _, _ = await org.enrolled(sub="admin-sub")
    token = mrzap_pb2.PkToken()
    token.CopyFrom(org.token(key))
    token.refreshed_id_token = org.idp.refreshed_token(
        sub="alice-sub", issued_at=org.clock.now(), lifetime_s=600
    )
    timestamp_ms = round(org.clock.now() * 1000)
    proof = sign_login_proof(key, "refresh", token, timestamp_ms)

    # `info` was authenticated before the lock: refresh reads the user again.
    await org.auth.lock_user(admin, "alice@example.com", "")
    with pytest.raises(PermissionDenied, match=LOCKED_MESSAGE):
        await org.auth.refresh(info, token, timestamp_ms, proof)


@pytest.mark.asyncio
async def test_only_administrators_lock_and_unlock(org: Org) -> None:
    alice, _, _ = await org.enrolled()
    bob, bob_token, _ = await org.enrolled(sub="bob-sub")
    with pytest.raises(PermissionDenied, match="only administrators"):
        await org.auth.lock_user(alice, "bob@example.com", "")
    with pytest.raises(PermissionDenied, match="only administrators"):
        await org.auth.unlock_user(alice, "bob@example.com")
    user_key = Caller.of_api_key(_api_key(admin=False))
    with pytest.raises(PermissionDenied, match="only administrators"):
        await org.auth.lock_user(user_key, "bob@example.com", "")
    assert (await org.auth.authenticate(bob_token)).user.id == bob.user.id


@pytest.mark.asyncio
async def test_an_administrators_api_key_may_lock(org: Org) -> None:
    _, alice_token, _ = await org.enrolled()
    admin_key = Caller.of_api_key(_api_key(admin=True))
    locked = await org.auth.lock_user(admin_key, "alice@example.com", "offboarding")
    assert locked.lock is not None
    assert locked.lock.locked_by == "API key 'ci' (k-1)"
    with pytest.raises(PermissionDenied, match=LOCKED_MESSAGE):
        await org.auth.authenticate(alice_token)


@pytest.mark.asyncio
async def test_lock_refusals(org: Org) -> None:
    admin, admin_token, _ = await org.enrolled(sub="admin-sub")
    await org.enrolled()
    with pytest.raises(NotFound):
        await org.auth.lock_user(admin, "nobody@example.com", "")
    with pytest.raises(NotFound):
        await org.auth.unlock_user(admin, "nobody@example.com")
    with pytest.raises(InvalidArgument):
        await org.auth.lock_user(admin, "", "")
    with pytest.raises(InvalidArgument, match="longer"):
        await org.auth.lock_user(admin, "alice@example.com", "x" * 1001)
    with pytest.raises(FailedPrecondition, match="yourself"):
        await org.auth.lock_user(admin, "admin@example.com", "")
    assert (await org.auth.authenticate(admin_token)).user.id == admin.user.id


@pytest.mark.asyncio
async def test_locking_again_replaces_the_reason_and_unlocking_twice_is_harmless(
    org: Org,
) -> None:
    admin, _, _ = await org.enrolled(sub="admin-sub")
    await org.enrolled()
    await org.auth.lock_user(admin, "alice@example.com", "first")
    org.clock.advance(5)
    again = await org.auth.lock_user(admin, "alice@example.com", "second")
    assert again.lock is not None
    assert (again.lock.reason, again.lock.locked_at) == ("second", org.clock.now())
    assert not (await org.auth.unlock_user(admin, "alice@example.com")).locked
    assert not (await org.auth.unlock_user(admin, "alice@example.com")).locked


def _api_key(*, admin: bool) -> ApiKey:
    return ApiKey(
        id="k-1",
        name="ci",
        admin=admin,
        creator_user_id="",
        created_at=0.0,
        expires_at=None,
        last_used_at=None,
        revoked_at=None,
    )
