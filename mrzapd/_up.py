"""`mrzapd up`: the embedded default on one machine.

It keeps everything in one data directory: a development IdP configuration with two demo users
(passwords generated on first run and kept in a 0600 file), the service configuration, TLS
material, the SQLite database and the local agent's registration. The IdP and the local agent run
as child processes, the service roles in this one; Ctrl-C (or SIGTERM) stops all three.

The demo users may open shells and run commands on the local target as the Unix user `mrzapd up`
runs as: a policy and the agent's local policy say so (`_demo`), and the banner says how.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from idp import hash_password
from mrzap.keys import write_secret_file
from mrzap.process import ChildProcess

from ._config import PolicySettings, ServiceConfig
from ._demo import demo_target_user, ensure_demo_policy
from ._local_agent import LocalAgent, local_agent
from ._server import RunningServer, serve_until_stopped

__all__ = ["run_up"]

_DEMO_USERS = (
    ("alice", "alice@example.com", "Alice Admin", ["mrzap-admins"]),
    ("bob", "bob@example.com", "Bob User", ["developers"]),
)


def _demo_passwords(idp_dir: Path, idp_port: int) -> dict[str, str]:
    """The demo users' passwords; writes the IdP configuration with their hashes on first run."""
    passwords_file = idp_dir / "demo-passwords"
    config_file = idp_dir / "idp.toml"
    if passwords_file.exists() and config_file.exists():
        lines = passwords_file.read_text().splitlines()
        return dict(line.split(" ", 1) for line in lines if line)
    passwords = {user: secrets.token_urlsafe(12) for user, *_ in _DEMO_USERS}
    users = "".join(
        f'\n[[users]]\nusername = "{user}"\npassword_hash = "{hash_password(passwords[user])}"\n'
        f'email = "{email}"\nemail_verified = true\nname = "{name}"\ngroups = {groups!r}\n'
        for user, email, name, groups in _DEMO_USERS
    )
    write_secret_file(
        config_file,
        (
            "# The development IdP of `mrzapd up`. Never use it in production.\n"
            f'[server]\nhost = "127.0.0.1"\nport = {idp_port}\ndata_dir = "keys"\n\n'
            '[[clients]]\nclient_id = "zli"\nredirect_uris = ["http://127.0.0.1/callback"]\n'
            + users
        ).encode(),
    )
    write_secret_file(passwords_file, "".join(f"{u} {p}\n" for u, p in passwords.items()).encode())
    return passwords


def _service_config(data_dir: Path, port: int, idp_port: int) -> Path:
    path = data_dir / "mrzapd.toml"
    if not path.exists():
        path.write_text(
            "# The service configuration of `mrzapd up`; see the README for every key.\n"
            f'[server]\nlisten = "127.0.0.1:{port}"\n\n'
            f'[idp]\nissuer = "http://127.0.0.1:{idp_port}"\nclient_id = "zli"\n\n'
            '[admins]\ngroups = ["mrzap-admins"]\n'
        )
    return path


def _banner(
    running: RunningServer,
    passwords: dict[str, str],
    issuer: str,
    agent: LocalAgent,
    passwords_file: Path,
    target_user: str,
) -> str:
    users = "\n".join(
        f"      {user:<6} password {password}" for user, password in passwords.items()
    )
    target = f"{target_user}@{agent.name}"
    return f"""
mrzap is up.
  service       127.0.0.1:{running.port} (TLS; CA certificate {running.tls.ca_cert})
  dev IdP       {issuer}
  local agent   target "{agent.name}" (log {agent.directory / "agent.log"})
  demo users (alice is an administrator; passwords in {passwords_file}):
{users}
  demo policy   both may connect to "{agent.name}" as the Unix user {target_user}

Log in (a browser opens; add --no-browser to get the URL instead):
  .venv/bin/zli login --server 127.0.0.1:{running.port} --ca-file {running.tls.ca_cert}
  .venv/bin/zli whoami
  .venv/bin/zli targets list            # "{agent.name}" is this machine, online
Then:
  .venv/bin/zli connect {target}
  .venv/bin/zli exec {target} -- uname -a
  .venv/bin/zli connections list
  .venv/bin/zli recording list
  .venv/bin/zli agent install-command   # how to add another machine

Press Ctrl-C to stop everything.
"""


def run_up(
    data_dir: Path,
    port: int,
    idp_port: int,
    database: str | None = None,
    policy_engine: str | None = None,
    target_user: str | None = None,
) -> None:
    """Start the development IdP and the service; run until interrupted.

    The demo users may act as `target_user` on this machine (default: the user running this).
    """
    offered_user = demo_target_user(target_user)
    data_dir = data_dir.resolve()
    idp_dir = data_dir / "idp"
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    idp_dir.mkdir(exist_ok=True, mode=0o700)
    passwords = _demo_passwords(idp_dir, idp_port)
    config = ServiceConfig.from_toml(_service_config(data_dir, port, idp_port), data_dir)
    if database:
        config = dataclasses.replace(config, database=database)
    if policy_engine:
        config = dataclasses.replace(config, policy=PolicySettings(policy_engine))
    idp = ChildProcess(
        [
            sys.executable,
            "-m",
            "idp",
            "--config",
            str(idp_dir / "idp.toml"),
            "--port",
            str(idp_port),
        ]
    )
    try:
        issuer = idp.wait_for(r"listening on (http://\S+)").group(1)

        @contextlib.asynccontextmanager
        async def alongside(running: RunningServer) -> AsyncIterator[None]:
            async with local_agent(running, data_dir, offered_user) as agent:
                emails = [email for _, email, *_ in _DEMO_USERS]
                await ensure_demo_policy(running, emails, agent.target_id, offered_user)
                passwords_file = idp_dir / "demo-passwords"
                banner = _banner(running, passwords, issuer, agent, passwords_file, offered_user)
                print(banner, flush=True)
                yield

        asyncio.run(serve_until_stopped(config, alongside))
    finally:
        idp.stop()
