"""`mrzapd up`, the embedded default behind `make run`: log in with what its banner says, and
find this machine as an online target through the local agent it runs."""

from __future__ import annotations

import json
import signal
import socket
import stat
import time
from pathlib import Path

import pyotp
import pytest

from mrzap.process import ChildProcess

from .conftest import BIN, Cluster, free_port
from .test_login import SECRET, browser_login


def local_targets(cluster: Cluster, home: Path, name: str, state: str) -> list[dict[str, str]]:
    """The targets called `name`, once one of them is in `state` (bounded wait)."""
    deadline = time.monotonic() + 30
    while True:
        listing = cluster.zli(home, "targets", "list", "--json")
        assert listing.wait() == 0, listing.output
        targets = [t for t in json.loads(listing.output) if t["name"] == name]
        if any(t["state"] == state for t in targets) or time.monotonic() > deadline:
            return targets
        time.sleep(0.5)


def test_up_serves_a_login_as_its_banner_says_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "mrzap-data"
    port, idp_port = free_port(), free_port()
    ports = ["--port", str(port), "--idp-port", str(idp_port)]
    up = ChildProcess([str(BIN / "mrzapd"), "up", "--data-dir", str(data), *ports])
    try:
        agent_name = up.wait_for(r'local agent\s+target "([^"]+)"').group(1)
        up.wait_for("Press Ctrl-C to stop everything")
        password = up.wait_for(r"alice\s+password (\S+)").group(1)
        ca_file = up.wait_for(r"CA certificate (\S+)\)").group(1)
        issuer = up.wait_for(r"dev IdP\s+(\S+)").group(1)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "idp" / "demo-passwords").stat().st_mode) == 0o600

        cluster = Cluster(tmp_path, issuer, f"127.0.0.1:{port}", Path(ca_file))
        home = tmp_path / "zli-config"
        zli = browser_login(cluster, home, "alice", password)
        zli.write(pyotp.TOTP(zli.wait_for(SECRET).group(1)).now() + "\n")
        assert zli.wait() == 0, zli.output
        whoami = cluster.zli(home, "whoami")
        assert whoami.wait() == 0, whoami.output
        assert "role:     admin" in whoami.output
        [target] = local_targets(cluster, home, agent_name, "TARGET_STATE_ONLINE")
        assert target["state"] == "TARGET_STATE_ONLINE", target
        assert stat.S_IMODE((data / "agent" / "agent.key").stat().st_mode) == 0o600

        up.process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
        assert up.wait() == 0, up.output
        with pytest.raises(ConnectionRefusedError):  # the IdP has gone with the service
            socket.create_connection(("127.0.0.1", idp_port), timeout=2).close()
        assert "mrzap-agent stopped" in (data / "agent" / "agent.log").read_text()

        # Started again, it keeps the same target: the local agent's registration is reused.
        up = ChildProcess([str(BIN / "mrzapd"), "up", "--data-dir", str(data), *ports])
        up.wait_for("Press Ctrl-C to stop everything")
        [again] = local_targets(cluster, home, agent_name, "TARGET_STATE_ONLINE")
        assert again["id"] == target["id"]
        assert again["state"] == "TARGET_STATE_ONLINE", again
    finally:
        up.stop()
