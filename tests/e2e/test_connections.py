"""Connections end to end: real IdP, `mrzapd serve`, a registered `mrzap-agent run` process, and
a client that logged in with MFA through the real IdP (`zli login`).

The client side of the channel is driven from the test with mrzap.handshake and mrzap.channel
over the user's own zli session (its bearer token, session key and PK token), through
BrokerService.OpenConnection (a real policy decision and grant) and BrokerService.Channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest

from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from zli._state import StateDir

from .client_channel import broker, open_channel
from .targets import ME, online_site
from .test_agents import Org

TIMEOUT_S = 10.0
POLICY = f"""\
name: alice-exec
kind: target_connect
subjects:
  emails: [alice@example.com]
targets:
  environments: [e2e-connect]
target_users: [{ME}]
verbs: [shell, exec]
max_session_duration: 1h
"""


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Org, str]]:
    """The cluster, alice logged in, a policy for her, and an online agent; (org, target id)."""
    root = tmp_path_factory.mktemp("connections")
    with online_site(root, users=("alice",), env="e2e-connect", policy=POLICY) as site:
        yield site.org, site.target_id


async def run_exec(org: Org, target_id: str, command: str, stdin: bytes) -> tuple[bytes, int]:
    """Run `command` through the broker as alice; its stdout and exit code."""
    async with broker(org.cluster) as stub:
        channel = await open_channel(
            stub,
            org.admin,
            target_id,
            mrzap_pb2.Exec(target_user=ME, command=command),
            target_user=ME,
            timeout_s=TIMEOUT_S,
            call_timeout_s=TIMEOUT_S,
        )
        await channel.send(mrzap_pb2.ChannelMessage(stdin=stdin))
        await channel.send(mrzap_pb2.ChannelMessage(end_of_input=mrzap_pb2.EndOfInput()))
        return await channel.until_exit()


def test_exec_through_the_broker_on_a_real_agent(org: tuple[Org, str]) -> None:
    service, target_id = org
    out, code = asyncio.run(run_exec(service, target_id, 'read x; echo "hi $x"; exit 7', b"you\n"))
    assert (out, code) == (b"hi you\n", 7)


def test_a_target_user_no_policy_allows_is_denied_with_the_reason(org: tuple[Org, str]) -> None:
    service, target_id = org
    token = StateDir(service.admin).load().session_token
    credentials = grpc.ssl_channel_credentials(service.cluster.ca_file.read_bytes())
    with (
        grpc.secure_channel(service.cluster.server, credentials) as channel,
        pytest.raises(grpc.RpcError) as denied,
    ):
        pb_grpc.BrokerServiceStub(channel).OpenConnection(
            pb.OpenConnectionRequest(
                target_id=target_id, verb=mrzap_pb2.VERB_EXEC, target_user="someone-else"
            ),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=TIMEOUT_S,
        )
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.details()
