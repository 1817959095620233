"""Agents end to end: real `mrzapd serve`, `mrzap-agent register` and `mrzap-agent run` processes.

An administrator (alice, logged in with MFA through the real IdP) makes an environment and a
registration key with `zli`; the agent registers, pinning the service's CA by fingerprint, and
runs. Target states are read back with `zli targets show`, refusals from the audit log.
Intervals are shortened through the service's configuration so each test takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.audit.v1 import audit_service_pb2_grpc as audit_grpc
from mrzap import keys
from mrzap.process import ChildProcess
from mrzap.tls import ca_fingerprint
from zli._state import StateDir

from .conftest import Cluster, free_port, start_cluster
from .test_login import enrol

BIN = Path(sys.executable).parent
ONLINE_LINE = r"mrzap-agent online as ([0-9a-f-]{36})"
#: Keepalives every second; silent targets go OFFLINE after 3 s; the sweep runs every second;
#: activation tokens last 4 s (so a test can watch one expire).
SERVICE_CONFIG = """
[broker]
keepalive_interval = 1

[registry]
offline_timeout = "3s"
sweep_interval = "1s"
activation_token_lifetime = "4s"
"""


class Org:
    """The cluster, its service process (restartable) and an administrator's zli home."""

    def __init__(self, cluster: Cluster, processes: list[ChildProcess], admin: Path) -> None:
        self.cluster = cluster
        self.idp, self.service = processes
        self.admin = admin
        self.fingerprint = ca_fingerprint(cluster.ca_file.read_bytes())

    def zli(self, *args: str) -> str:
        """Run zli as the administrator; its output (it must succeed)."""
        zli = self.cluster.zli(self.admin, *args)
        assert zli.wait(30) == 0, zli.output
        return zli.output

    def state(self, target: str) -> str:
        """The target's state, e.g. ONLINE."""
        shown = json.loads(self.zli("targets", "show", target, "--json"))
        return str(shown["target"]["state"]).removeprefix("TARGET_STATE_")

    def wait_state(self, target: str, wanted: str, timeout_s: float = 20.0) -> float:
        """Seconds until the target is in state `wanted`."""
        start = time.monotonic()
        while (state := self.state(target)) != wanted:
            assert time.monotonic() - start < timeout_s, f"{target} stayed {state}"
            time.sleep(0.3)
        return time.monotonic() - start

    def registration_key(self, env: str) -> str:
        created = json.loads(
            self.zli("keys", "registration", "create", f"key-{env}", "--env", env, "--json")
        )
        return str(created["secret"])

    def activation_token(self, name: str) -> str:
        created = json.loads(self.zli("agent", "install-command", "--name", name, "--json"))
        return str(created["activation_token"])

    def restart_service(self) -> None:
        """Stop `mrzapd serve` (SIGTERM) and start it again on the same port and data."""
        self.service.stop()
        self.service = ChildProcess(self.service.argv)
        self.service.wait_for(r"mrzapd listening on", timeout_s=30)

    def denied_events(self) -> list[audit_pb.AuditEvent]:
        """Refusals in the audit log about targets, newest first."""
        token = StateDir(self.admin).load().session_token
        credentials = grpc.ssl_channel_credentials(self.cluster.ca_file.read_bytes())
        with grpc.secure_channel(self.cluster.server, credentials) as channel:
            answer = audit_grpc.AuditServiceStub(channel).ListEvents(
                audit_pb.ListEventsRequest(
                    filter=audit_pb.EventFilter(
                        kinds=[audit_pb.EVENT_KIND_TARGET],
                        outcomes=[audit_pb.EVENT_OUTCOME_DENIED],
                    ),
                    page_size=100,
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        return list(answer.events)


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    root = tmp_path_factory.mktemp("agents")
    cluster, processes = start_cluster(root, port=free_port(), extra_config=SERVICE_CONFIG)
    started: Org | None = None
    try:
        enrol(cluster, root / "alice", "alice")
        started = Org(cluster, processes, root / "alice")
        started.zli("env", "create", "short-lived", "--offline-cleanup", "2s")
        yield started
    finally:
        processes[0].stop()
        (started.service if started else processes[1]).stop()


@dataclasses.dataclass(frozen=True)
class Done:
    """A finished command."""

    returncode: int
    output: str


def register(org: Org, config_dir: Path, *args: str) -> Done:
    """Run `mrzap-agent register` against the cluster to the end."""
    argv = [str(BIN / "mrzap-agent"), "register", "--server", org.cluster.server]
    process = ChildProcess([*argv, "--config-dir", str(config_dir), *args])
    return Done(process.wait(30), process.output)


def run_agent(config_dir: Path, *, wrapper: Sequence[str] = ()) -> ChildProcess:
    """`mrzap-agent run` on `config_dir`, started through `wrapper` (a command that execs its
    arguments) if given."""
    return ChildProcess(
        [
            *wrapper,
            str(BIN / "mrzap-agent"),
            "run",
            "--config-dir",
            str(config_dir),
            "--reconnect-base",
            "0.3",
            "--reconnect-cap",
            "2",
        ]
    )


def registered_agent(org: Org, tmp_path: Path, name: str, env: str = "default") -> Path:
    config_dir = tmp_path / name
    done = register(
        org,
        config_dir,
        "--registration-key",
        org.registration_key(env),
        "--ca-fingerprint",
        org.fingerprint,
        "--name",
        name,
    )
    assert done.returncode == 0, done.output
    return config_dir


def test_register_run_stop_and_come_back(org: Org, tmp_path: Path) -> None:
    config_dir = tmp_path / "web-1"
    key = org.registration_key("default")
    done = register(
        org,
        config_dir,
        "--registration-key",
        key,
        "--ca-fingerprint",
        org.fingerprint,
        "--name",
        "web-1",
    )
    assert done.returncode == 0, done.output
    assert "Registered as target web-1" in done.output
    for name in ("agent.toml", "agent.key", "ca.crt"):
        assert stat.S_IMODE((config_dir / name).stat().st_mode) == 0o600
    assert (config_dir / "ca.crt").read_bytes() == org.cluster.ca_file.read_bytes()
    assert key not in (config_dir / "agent.toml").read_text()
    assert org.state("web-1") == "REGISTERED"

    again = register(
        org, config_dir, "--registration-key", key, "--ca-fingerprint", org.fingerprint
    )
    assert again.returncode != 0
    assert "already holds a registration; use --force" in again.output

    agent = run_agent(config_dir)
    try:
        target_id = agent.wait_for(ONLINE_LINE).group(1)
        assert target_id in (config_dir / "agent.toml").read_text()
        assert org.state("web-1") == "ONLINE"
        agent.stop()
        assert agent.process.returncode == 0, agent.output
        assert "mrzap-agent stopped" in agent.output
        # The agent said goodbye: OFFLINE at once, not after the offline timeout.
        assert org.wait_state("web-1", "OFFLINE", timeout_s=10) < 3.0
    finally:
        agent.stop()


def test_agent_reconnects_by_itself_after_a_broker_restart(org: Org, tmp_path: Path) -> None:
    config_dir = registered_agent(org, tmp_path, "web-2")
    agent = run_agent(config_dir)
    try:
        agent.wait_for(ONLINE_LINE)
        org.restart_service()
        agent.wait_for(r"mrzap-agent offline: .*SHUTDOWN", timeout_s=10)
        deadline = time.monotonic() + 30
        while agent.output.count("mrzap-agent online as") < 2:
            assert time.monotonic() < deadline, agent.output
            time.sleep(0.2)
        shown = json.loads(org.zli("targets", "show", "web-2", "--json"))
        assert shown["target"]["state"] == "TARGET_STATE_ONLINE"
        states = [change["state"] for change in shown["state_changes"]]
        assert states.count("TARGET_STATE_ONLINE") == 2, states  # connected to the new broker
    finally:
        agent.stop()


def test_terminated_target_comes_back_online(org: Org, tmp_path: Path) -> None:
    config_dir = registered_agent(org, tmp_path, "web-3", env="short-lived")
    agent = run_agent(config_dir)
    agent.wait_for(ONLINE_LINE)
    agent.stop()
    org.wait_state("web-3", "TERMINATED", timeout_s=15)
    agent = run_agent(config_dir)
    try:
        agent.wait_for(ONLINE_LINE)
        assert org.state("web-3") == "ONLINE"
    finally:
        agent.stop()


def test_deleting_a_running_target_ends_its_agent(org: Org, tmp_path: Path) -> None:
    config_dir = registered_agent(org, tmp_path, "web-5")
    agent = run_agent(config_dir)
    try:
        agent.wait_for(ONLINE_LINE)
        org.zli("targets", "delete", "web-5", "--yes")
        # Told at its next keepalive, the agent stops for good: restarting it cannot help.
        assert agent.wait(timeout_s=15) == 78, agent.output
        assert "the target was deleted" in agent.output
    finally:
        agent.stop()


def test_agent_with_an_unknown_key_is_refused(org: Org, tmp_path: Path) -> None:
    config_dir = registered_agent(org, tmp_path, "web-4")
    impostor = tmp_path / "impostor"
    shutil.copytree(config_dir, impostor)
    keys.save_private_key(impostor / "agent.key", keys.generate_signing_key())
    agent = run_agent(impostor)
    try:
        agent.wait_for(
            r"mrzap-agent offline: the broker refused the agent \(AUTH_FAILED", timeout_s=15
        )
    finally:
        agent.stop()
    assert org.state("web-4") == "REGISTERED"
    target_id = json.loads(org.zli("targets", "show", "web-4", "--json"))["target"]["id"]
    refusals = [e for e in org.denied_events() if e.target.target_id == target_id]
    assert refusals, "the refusal is not in the audit log"
    assert "does not verify with the key registered" in refusals[0].target.message


def test_registration_refusals(org: Org, tmp_path: Path) -> None:
    # A registration key is not an activation token.
    key = org.registration_key("default")
    misused = register(
        org, tmp_path / "a", "--activation-token", key, "--ca-file", str(org.cluster.ca_file)
    )
    assert misused.returncode != 0
    assert "mrzap-agent:" in misused.output
    # An activation token works once...
    token = org.activation_token("web-5")
    first = register(
        org, tmp_path / "b", "--activation-token", token, "--ca-file", str(org.cluster.ca_file)
    )
    assert first.returncode == 0, first.output
    reused = register(
        org, tmp_path / "c", "--activation-token", token, "--ca-file", str(org.cluster.ca_file)
    )
    assert reused.returncode != 0
    # ...and only until it expires.
    late = org.activation_token("web-6")
    time.sleep(4.5)
    expired = register(
        org, tmp_path / "d", "--activation-token", late, "--ca-file", str(org.cluster.ca_file)
    )
    assert expired.returncode != 0
    # A server whose chain has no certificate with the pinned fingerprint is not trusted.
    pinned = register(org, tmp_path / "e", "--registration-key", key, "--ca-fingerprint", "ab" * 32)
    assert pinned.returncode == 4, pinned.output
    assert "refusing to trust it" in pinned.output
    for refused in "acde":
        assert not (tmp_path / refused / "agent.toml").exists()
