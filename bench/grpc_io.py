"""gRPC's two I/O paths on this machine: a bidi-stream ping-pong over TLS, as the programs use it.

The programs set `mrzap.programs.LOW_LATENCY_IO` in GRPC_EXPERIMENTS (the older I/O path, which
reads on gRPC's polling thread) unless it is set already; grpcio's default hands every read to
the EventEngine's thread pool. This runs the same echo server and client under each setting, each
pair in fresh processes (gRPC's core reads the setting once, at import), and prints the round
trips and their ratio. A keystroke echoed through the broker costs four such messages.

Run from the repository root: `python bench/grpc_io.py [--samples N]`. Not a test: nothing here
asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# Runnable as a plain script from the repository root: make the project and gen/ importable.
_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT / "gen", _ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from mrzap.programs import LOW_LATENCY_IO  # noqa: E402

_METHOD = "/bench.Echo/Echo"
_WARM_UP = 200
_MESSAGE = b"k" * 40  # about one keystroke's sealed frame


async def _serve(tls_dir: Path) -> None:
    import grpc
    import grpc.aio

    from mrzap.tls import ensure_server_tls

    async def echo(requests: AsyncIterator[bytes], _context: Any) -> AsyncIterator[bytes]:  # noqa: ANN401
        async for request in requests:
            yield request

    tls = ensure_server_tls(tls_dir, ["127.0.0.1"])
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.stream_stream_rpc_method_handler(echo)}
            ),
        )
    )
    credentials = grpc.ssl_server_credentials([(tls.server_key.read_bytes(), tls.server_chain())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _ping_pong(tls_dir: Path, port: int, samples: int) -> None:
    import grpc
    import grpc.aio

    from mrzap.tls import TlsFiles

    credentials = grpc.ssl_channel_credentials(TlsFiles(tls_dir).ca_cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        call: Any = channel.stream_stream(_METHOD)()
        times: list[float] = []
        for i in range(_WARM_UP + samples):
            start = time.perf_counter()
            await call.write(_MESSAGE)
            await call.read()
            if i >= _WARM_UP:
                times.append(time.perf_counter() - start)
        call.cancel()
    times.sort()
    print(times[len(times) // 2], times[int(len(times) * 0.99)], flush=True)


def _round_trips(experiments: str | None, samples: int) -> tuple[float, float]:
    """(p50, p99) seconds of a ping-pong with GRPC_EXPERIMENTS = `experiments` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if experiments is not None:
        env["GRPC_EXPERIMENTS"] = experiments
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="mrzap-bench-grpc-") as tls_dir:
        server = subprocess.Popen(
            [sys.executable, script, "--serve", tls_dir], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = server.stdout.readline().strip()
            done = subprocess.run(
                [sys.executable, script, "--client", tls_dir, port, str(samples)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            server.kill()
            server.wait()
    p50, p99 = (float(value) for value in done.stdout.split())
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000, help="round trips per setting")
    parser.add_argument("--serve", metavar="TLS_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(Path(args.serve)))
        return
    if args.client:
        tls_dir, port, samples = args.client
        asyncio.run(_ping_pong(Path(tls_dir), int(port), int(samples)))
        return
    default = _round_trips(None, args.samples)
    low_latency = _round_trips(LOW_LATENCY_IO, args.samples)
    print(
        f"\ngRPC bidi ping-pong over TLS, {args.samples} round trips per setting; loopback, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n"
    )
    print(f"{'round trip (us)':<18}{'grpc default':>14}{'programs':>12}{'ratio':>9}")
    for name, index in (("p50", 0), ("p99", 1)):
        ratio = low_latency[index] / default[index]
        print(
            f"{name:<18}{default[index] * 1e6:>14.0f}{low_latency[index] * 1e6:>12.0f}"
            f"{ratio:>8.2f}x"
        )
    print(f"\nprograms: GRPC_EXPERIMENTS={LOW_LATENCY_IO}")


if __name__ == "__main__":
    main()
