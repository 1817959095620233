"""Many agents on one broker: memory and idle CPU of the broker, and reconnection after a restart.

It runs one real `mrzapd serve` (SQLite in a temporary data directory) and N agents as real
gRPC-over-TLS control streams, each with its own connection, held by several worker processes
that run the agent's own `ControlLoop` (not a re-implementation). It prints:

- the broker's resident memory per connected agent, against the same broker with no agent;
- the broker's CPU use while the agents sit idle exchanging keepalives, against the idle broker
  with no agent, over the same window;
- how long until every agent is online again after the broker restarts (SIGTERM, start again).

Run from the repository root: `python bench/agents.py [--agents 1000] [--workers 4]`; add
`--agents 10000` for the large run. Linux only (it reads /proc). Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

# Runnable as a plain script from the repository root: make the project and gen/ importable.
_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT / "gen", _ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from agent import AgentConfig, Backoff, ControlLoop  # noqa: E402
from audit import MIGRATIONS as AUDIT_MIGRATIONS  # noqa: E402
from audit import AuditLog, AuditStore  # noqa: E402
from mrzap import keys  # noqa: E402
from mrzap.config import IdpConfig  # noqa: E402
from mrzap.process import ChildProcess  # noqa: E402
from mrzap.storage import Database, sqlite_url  # noqa: E402
from registry import MIGRATIONS as REGISTRY_MIGRATIONS  # noqa: E402
from registry import AgentRegistration, Registry, RegistryStore  # noqa: E402

BIN = Path(sys.executable).parent
_ONLINE = re.compile(r"^online (\d+)$", re.MULTILINE)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- measurements of the broker process ----------------------------------------------------------


def rss_mib(pid: int) -> float:
    """Resident memory of `pid`, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_percent(pid: int, window_s: float) -> float:
    """CPU use of `pid` over the next `window_s` seconds, in percent of one core."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)
    return 100 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


# --- set-up ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def register_targets(database_url: str, count: int) -> list[tuple[str, bytes]]:
    """`count` registered targets, made through the registry's own logic: (target id, raw key)."""
    database = Database(database_url)
    await asyncio.to_thread(database.migrate, [AUDIT_MIGRATIONS, REGISTRY_MIGRATIONS])
    registry = Registry(RegistryStore(database), AuditLog(AuditStore(database)))
    targets = []
    for index in range(count):
        key = keys.generate_signing_key()
        issued = await registry.create_activation_token(
            registration_key=None, target_name=f"bench-{index:05d}"
        )
        await registry.register_agent(
            issued.token, AgentRegistration(keys.public_key_bytes(key), f"bench-{index}", "bench")
        )
        targets.append((issued.target.id, key.private_bytes_raw()))
    await database.close()
    return targets


def start_service(root: Path, port: int, keepalive_s: float) -> ChildProcess:
    config = root / "mrzapd.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n\n'
        # The broker never calls the identity provider for agents; it only must be configured.
        '[idp]\nissuer = "http://127.0.0.1:9"\nclient_id = "zli"\n\n'
        f"[broker]\nkeepalive_interval = {keepalive_s}\n"
    )
    service = ChildProcess(
        [str(BIN / "mrzapd"), "serve", "--config", str(config), "--data-dir", str(root / "data")]
    )
    service.wait_for(r"mrzapd listening on", timeout_s=60)
    return service


def online_count(workers: list[ChildProcess]) -> int:
    """Agents online, as each worker last reported."""
    total = 0
    for worker in workers:
        reports = _ONLINE.findall(worker.output[-200:])
        total += int(reports[-1]) if reports else 0
    return total


def wait_all_online(
    workers: list[ChildProcess], count: int, timeout_s: float, progress: bool = False
) -> float:
    """Seconds until every agent reports online (printing the count every 5 s if `progress`)."""
    start = next_report = time.monotonic()
    while (online := online_count(workers)) < count:
        now = time.monotonic()
        if now - start > timeout_s:
            raise SystemExit(f"only {online} of {count} online after {timeout_s} s")
        if progress and now >= next_report:
            print(f"  {now - start:5.1f} s: {online} online", flush=True)
            next_report += 5.0
        time.sleep(0.2)
    return time.monotonic() - start


# --- the worker: many agents in one process ------------------------------------------------------


async def run_worker(entries: list[str], server: str, ca_pem: bytes) -> None:
    """Hold the control streams of the targets in `entries` (JSON lines) until SIGTERM."""
    logging.getLogger("mrzap.agent").setLevel(logging.WARNING)
    idp = IdpConfig(issuer="https://idp.invalid", client_id="zli")
    loops = []
    for line in entries:
        entry = json.loads(line)
        config = AgentConfig(server, entry["target_id"], "org", "bench", (), idp, ca_pem)
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(entry["key"]))
        loops.append(ControlLoop(config, key, backoff=Backoff()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.ensure_future(agent.run(stop)) for agent in loops]
    reported = -1
    while not stop.is_set():
        online = sum(agent.online for agent in loops)
        if online != reported:  # only changes: the parent reads the last line
            print(f"online {online}", flush=True)
            reported = online
        await asyncio.sleep(0.5)
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the run -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="agent processes")
    parser.add_argument("--keepalive", type=float, default=20.0, help="seconds (the default)")
    parser.add_argument("--window", type=float, default=40.0, help="idle CPU window, seconds")
    parser.add_argument("--progress", action="store_true", help="print reconnection progress")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--ca-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        entries = args.worker.read_text().splitlines()
        asyncio.run(run_worker(entries, args.server, args.ca_file.read_bytes()))
        return

    with tempfile.TemporaryDirectory(prefix="mrzap-bench-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir(mode=0o700)
        started = time.monotonic()
        targets = asyncio.run(register_targets(sqlite_url(root / "data" / "mrzap.db"), args.agents))
        print(f"registered {args.agents} targets in {time.monotonic() - started:.1f} s")

        port = free_port()
        service = start_service(root, port, args.keepalive)
        workers: list[ChildProcess] = []
        try:
            pid = service.process.pid
            time.sleep(2)
            base_rss = rss_mib(pid)
            base_cpu = cpu_percent(pid, min(args.window, 10.0))
            print(f"broker with no agent: {base_rss:.0f} MiB RSS, {base_cpu:.2f} % CPU")

            per_worker = -(-args.agents // args.workers)
            for index in range(args.workers):
                chunk = targets[index * per_worker : (index + 1) * per_worker]
                slice_file = root / f"worker-{index}.jsonl"
                slice_file.write_text(
                    "".join(
                        json.dumps({"target_id": target_id, "key": key.hex()}) + "\n"
                        for target_id, key in chunk
                    )
                )
                workers.append(
                    ChildProcess(
                        [
                            sys.executable,
                            __file__,
                            "--worker",
                            str(slice_file),
                            "--server",
                            f"127.0.0.1:{port}",
                            "--ca-file",
                            str(root / "data" / "tls" / "ca.crt"),
                        ]
                    )
                )
            first = wait_all_online(workers, args.agents, timeout_s=600)
            print(f"{args.agents} agents online in {first:.1f} s (first connection)")

            time.sleep(min(args.keepalive, 10.0))  # let the connection burst settle
            rss = rss_mib(pid)
            per_agent_kib = (rss - base_rss) * 1024 / args.agents
            print(
                f"broker RSS with {args.agents} agents: {rss:.0f} MiB = {rss / base_rss:.1f}x "
                f"the idle broker; {per_agent_kib:.1f} KiB per agent "
                f"(10,000 agents ≈ {base_rss + per_agent_kib * 10_000 / 1024:.0f} MiB)"
            )
            idle = cpu_percent(pid, args.window)
            print(
                f"broker CPU with {args.agents} idle agents (keepalive {args.keepalive:g} s, "
                f"{args.window:g} s window): {idle:.2f} % of one core "
                f"(idle broker: {base_cpu:.2f} %; {idle - base_cpu:+.2f} points)"
            )

            restarted_at = time.monotonic()
            service.stop()
            stopped = time.monotonic() - restarted_at
            service = start_service(root, port, args.keepalive)
            ready = time.monotonic() - restarted_at
            print(
                f"broker restart: old one stopped in {stopped:.1f} s, new one up at {ready:.1f} s"
            )
            broker_cpu = cpu_seconds(service.process.pid)
            agents_cpu = sum(cpu_seconds(worker.process.pid) for worker in workers)
            again = wait_all_online(workers, args.agents, timeout_s=900, progress=args.progress)
            broker_cpu = cpu_seconds(service.process.pid) - broker_cpu
            agents_cpu = sum(cpu_seconds(worker.process.pid) for worker in workers) - agents_cpu
            print(
                f"broker restart: all {args.agents} agents online again {again:.1f} s after the "
                f"new broker was ready ({time.monotonic() - restarted_at:.1f} s after SIGTERM)"
            )
            # The simulated agents share this machine's cores with the broker; the broker's own
            # CPU time is what one dedicated core would need to readmit them all.
            print(
                f"  meanwhile the broker used {broker_cpu:.1f} CPU-s "
                f"({1000 * broker_cpu / args.agents:.2f} ms per agent) and the agent processes "
                f"{agents_cpu:.1f} CPU-s, on {os.cpu_count()} cores"
            )
        finally:
            for worker in workers:
                worker.stop()
            service.stop()


if __name__ == "__main__":
    main()
