"""Fixtures of the policy role's RPC tests: a whole `mrzapd` service in this process, over TLS."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest_asyncio

from bastion.policy.v1 import policy_service_pb2_grpc as pb_grpc
from mrzap import keys
from mrzap.testing import TestIdentityProvider
from mrzapd._config import ServiceConfig
from mrzapd._server import RunningServer, start_server
from registry import AgentRegistration, Target

from ._rpc import Metadata, bearer, login

ADMIN_EMAIL = "admin@example.com"


@dataclasses.dataclass
class Service:
    """A running service, a TLS channel to it, and the policy role's stub."""

    running: RunningServer
    channel: grpc.aio.Channel
    policy: pb_grpc.PolicyServiceAsyncStub
    idp: TestIdentityProvider

    async def session(self, email: str, groups: tuple[str, ...] = ()) -> Metadata:
        """The bearer metadata of `email`'s session, MFA done."""
        return bearer(await login(self.channel, self.idp, email, groups))

    async def target(self, name: str = "web-1", environment_id: str = "") -> Target:
        """A target registered the way an agent does it."""
        registry = self.running.registry
        key = await registry.create_registration_key(f"key-{name}", environment_id)
        issued = await registry.create_activation_token(
            registration_key=key.secret, target_name=name
        )
        public_key = keys.public_key_bytes(keys.generate_signing_key())
        registered = await registry.register_agent(issued.token, AgentRegistration(public_key))
        return registered.target


def service_config(idp: TestIdentityProvider, data_dir: Path, **tables: object) -> ServiceConfig:
    """The configuration of a test service on a free loopback port."""
    return ServiceConfig.from_dict(
        {
            "server": {"listen": "127.0.0.1:0"},
            "idp": {
                "issuer": idp.issuer,
                "client_id": "zli",
                "allowed_email_domains": ["example.com"],
                "groups_claim": "groups",
            },
            "admins": {"emails": [ADMIN_EMAIL]},
            **tables,
        },
        data_dir,
    )


@pytest_asyncio.fixture
async def service(idp: TestIdentityProvider, tmp_path: Path) -> AsyncIterator[Service]:
    running = await start_server(service_config(idp, tmp_path / "service"))
    try:
        credentials = grpc.ssl_channel_credentials(running.tls.ca_cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", credentials) as channel:
            yield Service(running, channel, pb_grpc.PolicyServiceStub(channel), idp)
    finally:
        await running.stop(0)
