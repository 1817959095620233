"""`mrzapd up`, the embedded default behind `make run`: log in with what its banner says."""

from __future__ import annotations

import signal
import socket
import stat
from pathlib import Path

import pyotp
import pytest

from mrzap.process import ChildProcess

from .conftest import BIN, Cluster
from .test_login import SECRET, browser_login


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_up_serves_a_login_as_its_banner_says_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "mrzap-data"
    port, idp_port = free_port(), free_port()
    ports = ["--port", str(port), "--idp-port", str(idp_port)]
    up = ChildProcess([str(BIN / "mrzapd"), "up", "--data-dir", str(data), *ports])
    try:
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

        up.process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
        assert up.wait() == 0, up.output
        with pytest.raises(ConnectionRefusedError):  # the IdP has gone with the service
            socket.create_connection(("127.0.0.1", idp_port), timeout=2).close()
    finally:
        up.stop()
