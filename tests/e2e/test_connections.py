"""Connections end to end: real IdP, `mrzapd serve`, a registered `mrzap-agent run` process, and
a client that logged in with MFA through the real IdP (`zli login`).

The client side of the channel is driven from the test with mrzap.handshake and mrzap.channel
over the user's own zli session (its bearer token, session key and PK token), through
BrokerService.OpenConnection (a real policy decision and grant) and BrokerService.Channel.
"""

from __future__ import annotations

import asyncio
import os
import pwd
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from bastion.broker.v1 import broker_service_pb2 as pb
from bastion.broker.v1 import broker_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap import keys
from mrzap.channel import Direction, FrameOpener, FrameSealer
from mrzap.handshake import build_syn, verify_synack
from mrzap.process import ChildProcess
from zli._state import StateDir

from .conftest import free_port, start_cluster
from .test_admin_cli import ok
from .test_agents import ONLINE_LINE, SERVICE_CONFIG, Org, register, run_agent
from .test_login import enrol

ME = pwd.getpwuid(os.getuid()).pw_name
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
    cluster, processes = start_cluster(root, port=free_port(), extra_config=SERVICE_CONFIG)
    agent: ChildProcess | None = None
    try:
        enrol(cluster, root / "alice", "alice")
        org = Org(cluster, processes, root / "alice")
        org.zli("env", "create", "e2e-connect")
        (root / "policy.yaml").write_text(POLICY)
        ok(cluster, org.admin, "policy", "import", str(root / "policy.yaml"))
        config_dir = root / "agent"
        done = register(
            org,
            config_dir,
            "--registration-key",
            org.registration_key("e2e-connect"),
            "--ca-fingerprint",
            org.fingerprint,
            "--name",
            "web-1",
        )
        assert done.returncode == 0, done.output
        (config_dir / "local-policy.toml").write_text(f'target_users = ["{ME}"]\n')
        agent = run_agent(config_dir)
        target_id = agent.wait_for(ONLINE_LINE, timeout_s=30).group(1)
        yield org, target_id
    finally:
        if agent is not None:
            agent.stop()
            print(agent.output)  # shown when a test failed
        processes[0].stop()
        processes[1].stop()
        print(processes[1].output)  # shown when a test failed


async def run_exec(org: Org, target_id: str, command: str, stdin: bytes) -> tuple[bytes, int]:
    """Run `command` through the broker as alice; its stdout and exit code."""
    home = StateDir(org.admin)
    state, session_key = home.load(), home.load_key()
    metadata = (("authorization", f"Bearer {state.session_token}"),)
    credentials = grpc.ssl_channel_credentials(org.cluster.ca_file.read_bytes())
    async with grpc.aio.secure_channel(org.cluster.server, credentials) as channel:
        stub = pb_grpc.BrokerServiceStub(channel)
        opened = await stub.OpenConnection(
            pb.OpenConnectionRequest(target_id=target_id, verb=mrzap_pb2.VERB_EXEC, target_user=ME),
            metadata=metadata,
            timeout=TIMEOUT_S,
        )
        handshake = build_syn(
            session_key=session_key,
            pk_token=mrzap_pb2.PkToken(
                id_token=state.id_token,
                upk=keys.public_key_bytes(session_key),
                rz=state.rz,
                refreshed_id_token=state.refreshed_id_token,
            ),
            signed_grant=opened.grant,
            channel_id=opened.channel_id,
            action=mrzap_pb2.Exec(target_user=ME, command=command),
        )
        call: Any = stub.Channel(metadata=metadata, timeout=TIMEOUT_S)
        await call.write(
            pb.ChannelRequest(
                open=pb.ChannelOpen(channel_id=opened.channel_id, syn=handshake.signed_syn)
            )
        )
        answer = await call.read()
        assert answer.WhichOneof("frame") == "syn_ack", answer
        established = verify_synack(handshake, answer.syn_ack)
        sealer = FrameSealer(established.keys, opened.channel_id, Direction.CLIENT_TO_AGENT)
        opener = FrameOpener(established.keys, opened.channel_id, Direction.AGENT_TO_CLIENT)
        for message in (
            mrzap_pb2.ChannelMessage(stdin=stdin),
            mrzap_pb2.ChannelMessage(end_of_input=mrzap_pb2.EndOfInput()),
        ):
            await call.write(pb.ChannelRequest(channel_frame=sealer.seal(message)))
        out = bytearray()
        while (response := await call.read()) is not grpc.aio.EOF:
            message = opener.open(response.channel_frame)
            if message.HasField("exit"):
                return bytes(out), message.exit.code
            out += message.stdout
        raise AssertionError(f"no exit; output {bytes(out)!r}")


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
