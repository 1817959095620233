"""The local agent of `mrzapd up`: this machine as a target of the embedded service.

On first start it is registered with an activation token issued in-process (no registration key
to hand around); afterwards its stored registration is reused. Its local-policy.toml (written
once, never overwritten) lets it serve the Unix user `mrzapd up` runs as. It runs as a child
process that dials the service like any other agent, logs to a file in its directory, and is
stopped (SIGTERM) before the service stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from agent import AgentFiles
from mrzap.errors import Unavailable

from ._demo import ensure_local_policy
from ._server import RunningServer

__all__ = ["LocalAgent", "local_agent"]

_REGISTER_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class LocalAgent:
    """The running local agent."""

    name: str
    """The target's name."""

    target_id: str
    """The target's id, from its registration."""

    directory: Path
    """Its configuration directory (key, `agent.toml`, `agent.log`)."""


def _agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


async def _register(running: RunningServer, directory: Path, name: str) -> None:
    issued = await running.registry.create_activation_token(registration_key=None, target_name=name)
    register = await asyncio.create_subprocess_exec(
        *_agent_command(
            "register",
            "--server",
            f"127.0.0.1:{running.port}",
            "--activation-token",
            issued.token,
            "--name",
            name,
            "--ca-file",
            str(running.tls.ca_cert),
            "--config-dir",
            str(directory),
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(register.communicate(), _REGISTER_TIMEOUT_S)
    if register.returncode != 0:
        raise Unavailable(f"the local agent did not register: {output.decode().strip()}")


@contextlib.asynccontextmanager
async def local_agent(
    running: RunningServer, data_dir: Path, target_user: str
) -> AsyncIterator[LocalAgent]:
    """Register the local agent on first use, run it while the context lasts, then stop it.

    `target_user` is the Unix user its local policy allows, unless the operator wrote that file.
    """
    directory = data_dir / "agent"
    name = socket.gethostname().split(".")[0] or "local"
    files = AgentFiles(directory)
    if not files.registered():
        await _register(running, directory, name)
    config, _ = await asyncio.to_thread(files.load)
    await asyncio.to_thread(ensure_local_policy, directory, target_user)
    with (directory / "agent.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *_agent_command("run", "--config-dir", str(directory)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # Its own session: a Ctrl-C in the terminal reaches only `mrzapd up`, which stops it.
            start_new_session=True,
        )
    try:
        yield LocalAgent(config.name or name, config.target_id, directory)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
