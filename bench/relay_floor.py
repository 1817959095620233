"""The floor under a relayed keystroke echo on this machine, next to OpenSSH's whole echo.

mrzap's targets dial out, so a keystroke goes client → broker → agent and back: one process hop
more than ssh → sshd. This measures what such a chain costs before any of mrzap's work, in the same
run as OpenSSH's echo (`bench/shell.py`'s measurement: `ssh -tt` into a private sshd running
`cat` in raw mode):

- grpc.aio: a client, a relay and an echo server in three processes, over TLS, on the gRPC I/O
  path the programs use; the relay forwards each message both ways and does nothing else;
- asyncio: the same chain over asyncio TLS streams with length-prefixed frames, the cheapest
  transport Python's standard library offers, as what a data path beside gRPC could reach.

Each sample is one 40-byte message (a keystroke's sealed frame) there and back. It prints p50 and
p99 with their ratio to OpenSSH's echo, and the relay's CPU time per round trip. When a bare chain
is already past a goal's ratio, no implementation of that design meets it here. Run from the
repository root: `python bench/relay_floor.py [--samples 3000]`. Needs sshd as `bench/shell.py`
does (installed when run as root). Not a test: nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

# Runnable as a plain script from the repository root: make the project and gen/ importable.
_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT / "gen", _ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench.shell import (  # noqa: E402
    bench_account,
    echo_round_trips,
    ensure_sshd,
    percentile,
    private_sshd,
)
from mrzap.programs import LOW_LATENCY_IO  # noqa: E402
from mrzap.tls import TlsFiles, ensure_server_tls  # noqa: E402

_METHOD = "/bench.Relay/Echo"
_MESSAGE = b"k" * 40
_WARM_UP = 300
_GOALS = {"p50": 1.5, "p99": 3.0}


def _bytes(data: bytes) -> bytes:
    return data


# --- grpc.aio ------------------------------------------------------------------------------------


async def _grpc_serve(tls: TlsFiles, handler: Callable[..., AsyncIterator[bytes]]) -> None:
    import grpc
    import grpc.aio

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Relay",
                {"Echo": grpc.stream_stream_rpc_method_handler(handler, _bytes, _bytes)},
            ),
        )
    )
    credentials = grpc.ssl_server_credentials([(tls.server_key.read_bytes(), tls.server_chain())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def _grpc_channel(tls: TlsFiles, port: int) -> Any:  # noqa: ANN401 - grpc.aio.Channel
    import grpc
    import grpc.aio

    credentials = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def _grpc_echo(tls: TlsFiles, _upstream: int) -> None:
    async def echo(requests: AsyncIterator[bytes], _context: object) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    await _grpc_serve(tls, echo)


async def _grpc_relay(tls: TlsFiles, upstream: int) -> None:
    channel = _grpc_channel(tls, upstream)

    async def relay(requests: AsyncIterator[bytes], _context: object) -> AsyncIterator[bytes]:
        call = channel.stream_stream(_METHOD, _bytes, _bytes)()

        async def forward() -> None:
            async for request in requests:
                await call.write(request)

        forwarding = asyncio.ensure_future(forward())
        try:
            async for response in call:
                yield response
        finally:
            forwarding.cancel()

    await _grpc_serve(tls, relay)


async def _grpc_client(tls: TlsFiles, port: int, samples: int) -> list[float]:
    async with _grpc_channel(tls, port) as channel:
        call = channel.stream_stream(_METHOD, _bytes, _bytes)()
        times = []
        for _ in range(_WARM_UP + samples):
            start = time.perf_counter()
            await call.write(_MESSAGE)
            await call.read()
            times.append(time.perf_counter() - start)
        call.cancel()
    return times[_WARM_UP:]


# --- asyncio streams -----------------------------------------------------------------------------


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(size)


def _write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(struct.pack(">I", len(data)) + data)


def _server_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.server_cert, tls.server_key)
    return context


def _client_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(tls.ca_cert)
    return context


async def _streams_serve(
    tls: TlsFiles,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=_server_context(tls))
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


async def _streams_echo(tls: TlsFiles, _upstream: int) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _write_frame(writer, await _read_frame(reader))

    await _streams_serve(tls, echo)


async def _streams_relay(tls: TlsFiles, upstream: int) -> None:
    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while True:
            _write_frame(sink, await _read_frame(source))

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", upstream, ssl=_client_context(tls)
        )
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    await _streams_serve(tls, relay)


async def _streams_client(tls: TlsFiles, port: int, samples: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_context(tls))
    times = []
    for _ in range(_WARM_UP + samples):
        start = time.perf_counter()
        _write_frame(writer, _MESSAGE)
        await _read_frame(reader)
        times.append(time.perf_counter() - start)
    writer.close()
    return times[_WARM_UP:]


_SERVERS = {
    "grpc": {"echo": _grpc_echo, "relay": _grpc_relay},
    "asyncio": {"echo": _streams_echo, "relay": _streams_relay},
}
_CLIENTS = {"grpc": _grpc_client, "asyncio": _streams_client}


# --- the chains ----------------------------------------------------------------------------------


def _cpu_of(pid: int) -> float:
    """Seconds of CPU that process `pid` has used, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _chain(transport: str, samples: int) -> tuple[list[float], float]:
    """Round trips through client → relay → echo server over `transport`, each in its own
    process, and the relay's CPU seconds per round trip (warm-up included, a few per cent)."""
    env = {**os.environ, "GRPC_EXPERIMENTS": LOW_LATENCY_IO}
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="mrzap-bench-relay-") as tls_dir:
        ensure_server_tls(Path(tls_dir), ["127.0.0.1"])
        servers: list[subprocess.Popen[str]] = []
        try:
            upstream = "0"
            for role in ("echo", "relay"):
                server = subprocess.Popen(
                    [sys.executable, script, "--role", role, transport, tls_dir, upstream],
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                servers.append(server)
                assert server.stdout is not None
                upstream = server.stdout.readline().strip()
            relay_before = _cpu_of(servers[1].pid)
            done = subprocess.run(
                [sys.executable, script, "--role", "client", transport, tls_dir, upstream],
                env={**env, "MRZAP_BENCH_SAMPLES": str(samples)},
                capture_output=True,
                text=True,
                check=True,
            )
            relay_cpu = _cpu_of(servers[1].pid) - relay_before
        finally:
            for server in servers:
                server.kill()
                server.wait()
    times = [float(value) for value in done.stdout.split()]
    return times, relay_cpu / (_WARM_UP + samples)


def _run_role(role: str, transport: str, tls_dir: str, port: str) -> None:
    tls = TlsFiles(Path(tls_dir))
    if role == "client":
        samples = int(os.environ["MRZAP_BENCH_SAMPLES"])
        times = asyncio.run(_CLIENTS[transport](tls, int(port), samples))
        print(" ".join(f"{value:.9f}" for value in times), flush=True)
    else:
        asyncio.run(_SERVERS[transport][role](tls, int(port)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000, help="round trips per measurement")
    parser.add_argument("--role", nargs=4, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        _run_role(*args.role)
        return
    ensure_sshd()
    with (
        tempfile.TemporaryDirectory(prefix="mrzap-bench-relay-") as tmp,
        bench_account() as user,
    ):
        root = Path(tmp)
        root.chmod(0o711)  # the account reaches authorized_keys below it
        with private_sshd(root / "sshd", user) as ssh:
            print("measuring ...", flush=True)
            openssh = echo_round_trips([ssh[0], "-tt", *ssh[1:]], dict(os.environ), args.samples)
    chains = {transport: _chain(transport, args.samples) for transport in ("grpc", "asyncio")}
    print(
        f"\nrelay floor: {args.samples} round trips each; loopback, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print(f"{'echo (ms)':<28}{'p50':>8}{'p99':>8}{'p50/ssh':>9}{'p99/ssh':>9}{'relay CPU':>11}")
    base = {"p50": percentile(openssh, 0.5), "p99": percentile(openssh, 0.99)}
    print(f"{'OpenSSH, whole echo':<28}{base['p50'] * 1e3:>8.2f}{base['p99'] * 1e3:>8.2f}")
    for transport, (times, relay_cpu) in chains.items():
        p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
        print(
            f"{f'bare {transport} relay chain':<28}{p50 * 1e3:>8.2f}{p99 * 1e3:>8.2f}"
            f"{p50 / base['p50']:>8.2f}x{p99 / base['p99']:>8.2f}x{relay_cpu * 1e6:>8.0f} us"
        )
    goals = ", ".join(f"{name} ≤ {ratio:g}x" for name, ratio in _GOALS.items())
    print(f"\necho goals ({goals}) are for the whole of mrzap: PTY, AEAD and recording included")


if __name__ == "__main__":
    main()
