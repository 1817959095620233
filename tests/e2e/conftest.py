"""An organisation on loopback: the development IdP and `mrzapd serve` as real processes.

Tests drive it the way users do: `zli` runs as a separate process, and the test plays the browser
by submitting the IdP's login form over HTTP (or drives it in headless Chromium).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect  # type: ignore[import-untyped]  # it ships no type information
import pytest

from idp import hash_password
from mrzap.process import ChildProcess

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "olivia", "oscar")
#: Users in the IdP group the service makes administrators.
ADMINS = ("alice", "olivia")


@dataclasses.dataclass
class Cluster:
    """The running organisation and how to reach it."""

    root: Path
    issuer: str
    server: str
    ca_file: Path

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """The environment `zli` runs in as the user whose config directory is `home`."""
        env = {**os.environ, "MRZAP_CONFIG_DIR": str(home), "MRZAP_SERVER": self.server}
        env["MRZAP_CA_FILE"] = str(self.ca_file)
        return {**env, **extra}

    def zli(self, home: Path, *args: str, stdin: bool = False) -> ChildProcess:
        """Start `zli` with its own config directory."""
        return ChildProcess([str(BIN / "zli"), *args], env=self.env(home), stdin=stdin)


def zli_terminal(args: list[str], env: dict[str, str], timeout_s: float) -> pexpect.spawn:
    """zli on a fresh 24x80 pseudo-terminal, with Ctrl-C at its default as from a login shell.

    A suite started as a background job ignores SIGINT, and so would zli: a program keeps a
    SIGINT ignored when it starts (as background jobs are meant to).
    """
    return pexpect.spawn(
        str(BIN / "zli"),
        args,
        env=env,
        dimensions=(24, 80),
        timeout=timeout_s,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def free_port() -> int:
    """A loopback port free right now, for a service a test restarts on the same port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _idp_config(path: Path, token_lifetime_s: int) -> None:
    users = "".join(
        f'\n[[users]]\nusername = "{name}"\npassword_hash = "{hash_password(PASSWORD)}"\n'
        f'email = "{name}@example.com"\nemail_verified = true\n'
        f"groups = {['mrzap-admins'] if name in ADMINS else ['developers']!r}\n"
        for name in USERS
    )
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "keys"\n\n'
        f"[tokens]\nid_token_lifetime_seconds = {token_lifetime_s}\n\n"
        '[[clients]]\nclient_id = "zli"\nredirect_uris = ["http://127.0.0.1/callback"]\n\n'
        '[[clients]]\nclient_id = "other-app"\nredirect_uris = ["http://127.0.0.1/callback"]\n'
        + users
    )


def start_cluster(
    root: Path,
    *,
    token_lifetime_s: int = 600,
    max_session_age: str = "12h",
    database: str | None = None,
    port: int = 0,
    extra_config: str = "",
) -> tuple[Cluster, list[ChildProcess]]:
    """Start the IdP and the service under `root`; returns the cluster and its processes.

    `port` 0 picks a free port; a fixed one lets a test restart the service where agents expect
    it. `extra_config` is appended to mrzapd.toml (e.g. `[broker]` or `[registry]` tables).
    """
    root.mkdir(parents=True, exist_ok=True)
    _idp_config(root / "idp.toml", token_lifetime_s)
    idp = ChildProcess([str(BIN / "mrzapd"), "idp", "--config", str(root / "idp.toml")])
    processes = [idp]
    try:
        issuer = idp.wait_for(r"listening on (http://\S+)").group(1)
        (root / "mrzapd.toml").write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n\n'
            f'[org]\nmax_session_age = "{max_session_age}"\n\n'
            f'[idp]\nissuer = "{issuer}"\nclient_id = "zli"\n\n'
            '[admins]\ngroups = ["mrzap-admins"]\n' + extra_config
        )
        data = root / "data"
        service = ChildProcess(
            [
                str(BIN / "mrzapd"),
                "serve",
                "--config",
                str(root / "mrzapd.toml"),
                "--data-dir",
                str(data),
                *(["--db", database] if database else []),
            ]
        )
        processes.append(service)
        bound = service.wait_for(r"mrzapd listening on 127\.0\.0\.1:(\d+)").group(1)
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return Cluster(root, issuer, f"127.0.0.1:{bound}", data / "tls" / "ca.crt"), processes


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One organisation shared by the end-to-end tests; each test uses its own users."""
    started, processes = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield started
    for process in processes:
        process.stop()
