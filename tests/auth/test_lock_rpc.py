"""BrokerService.LockUser and UnlockUser over real gRPC with TLS, on a whole `mrzapd` in-process.

The lock is checked where users meet it: the locked user's next call and next login are refused
with the lock's message, administrators see the lock in ListUsers, only administrators may lock,
and the audit log keeps who locked whom and why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from audit import EventQuery
from auth import LOCKED_MESSAGE
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.auth.v1 import auth_service_pb2 as pb
from bastion.auth.v1 import auth_service_pb2_grpc as pb_grpc
from bastion.broker.v1 import broker_service_pb2 as broker_pb
from bastion.broker.v1 import broker_service_pb2_grpc as broker_grpc
from mrzap.testing import TestIdentityProvider
from mrzapd._server import RunningServer

from .test_auth_rpc import bearer, logged_in, login


class Stubs:
    """The auth and broker stubs on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.auth = pb_grpc.AuthServiceStub(channel)
        self.broker = broker_grpc.BrokerServiceStub(channel)


@pytest_asyncio.fixture
async def stubs(server: RunningServer) -> AsyncIterator[Stubs]:
    credentials = grpc.ssl_channel_credentials(server.tls.ca_cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        yield Stubs(channel)


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value


@pytest.mark.asyncio
async def test_a_locked_user_is_refused_everywhere_until_unlocked(
    server: RunningServer, stubs: Stubs, idp: TestIdentityProvider
) -> None:
    alice = await logged_in(stubs.auth, idp, "alice-sub")
    admin = await logged_in(stubs.auth, idp, "admin-sub")

    locked = await stubs.broker.LockUser(
        broker_pb.LockUserRequest(user="alice@example.com", reason="laptop stolen"),
        metadata=bearer(admin),
    )
    assert locked.revocation_id

    for call in (
        stubs.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(alice)),
        stubs.auth.RefreshSession(pb.RefreshSessionRequest(), metadata=bearer(alice)),
        login(stubs.auth, idp, "alice-sub"),
    ):
        refused = await _refused(call)
        assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
        assert refused.details() == LOCKED_MESSAGE

    users = await stubs.auth.ListUsers(pb.ListUsersRequest(), metadata=bearer(admin))
    assert [(u.email, u.locked) for u in users.users] == [
        ("admin@example.com", False),
        ("alice@example.com", True),
    ]
    events, _ = await server.audit.list_events(EventQuery(text="laptop stolen"))
    assert [event.api_call.method for event in events] == [
        "/bastion.broker.v1.BrokerService/LockUser"
    ]
    (event,) = events
    assert event.outcome == audit_pb.EVENT_OUTCOME_ALLOWED
    assert event.actor.subject.email == "admin@example.com"
    assert locked.revocation_id in event.reasons[0].message

    await stubs.broker.UnlockUser(
        broker_pb.UnlockUserRequest(user="alice@example.com"), metadata=bearer(admin)
    )
    # The session the lock ended stays ended; logging in works again.
    ended = await _refused(stubs.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(alice)))
    assert ended.code() is grpc.StatusCode.UNAUTHENTICATED
    again = await login(stubs.auth, idp, "alice-sub")
    assert again.user.email == "alice@example.com"
    assert not again.user.locked
    unlocks, _ = await server.audit.list_events(EventQuery(text="user alice@example.com unlocked"))
    assert len(unlocks) == 1


@pytest.mark.asyncio
async def test_only_administrators_may_lock(stubs: Stubs, idp: TestIdentityProvider) -> None:
    alice = await logged_in(stubs.auth, idp, "alice-sub")
    bob = await logged_in(stubs.auth, idp, "bob-sub")
    for call in (
        stubs.broker.LockUser(
            broker_pb.LockUserRequest(user="alice@example.com"), metadata=bearer(bob)
        ),
        stubs.broker.UnlockUser(
            broker_pb.UnlockUserRequest(user="alice@example.com"), metadata=bearer(bob)
        ),
    ):
        refused = await _refused(call)
        assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "only administrators" in (refused.details() or "")
    # Nobody was locked: both still work.
    for token in (alice, bob):
        await stubs.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))


@pytest.mark.asyncio
async def test_lock_refusals_are_clear(stubs: Stubs, idp: TestIdentityProvider) -> None:
    admin = await logged_in(stubs.auth, idp, "admin-sub")
    cases = (
        (broker_pb.LockUserRequest(), grpc.StatusCode.INVALID_ARGUMENT, "name the user"),
        (
            broker_pb.LockUserRequest(user="nobody@example.com"),
            grpc.StatusCode.NOT_FOUND,
            "no user",
        ),
        (
            broker_pb.LockUserRequest(user="admin@example.com"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "yourself",
        ),
    )
    for request, code, message in cases:
        refused = await _refused(stubs.broker.LockUser(request, metadata=bearer(admin)))
        assert refused.code() is code
        assert message in (refused.details() or "")
    refused = await _refused(
        stubs.broker.UnlockUser(broker_pb.UnlockUserRequest(), metadata=bearer(admin))
    )
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
