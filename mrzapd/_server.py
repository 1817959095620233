"""Builds and runs the gRPC server with the service roles of one `mrzapd` process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Callable

import grpc.aio

from auth import MIGRATIONS as AUTH_MIGRATIONS
from auth import AuthService, AuthStore
from auth._interceptor import SessionInterceptor
from auth._servicer import ACCESS as AUTH_ACCESS
from auth._servicer import AuthServicer
from bastion.auth.v1 import auth_service_pb2_grpc
from mrzap.jwks import HttpJwksSource
from mrzap.pktoken import PkTokenVerifier
from mrzap.storage import Database
from mrzap.tls import TlsFiles, ensure_server_tls

from ._config import ServiceConfig

__all__ = ["RunningServer", "serve_until_stopped", "start_server"]

#: Printed (with the port) once the server accepts calls; tests and `mrzapd up` wait for it.
READY_LINE = "mrzapd listening on {host}:{port}"


@dataclasses.dataclass
class RunningServer:
    """A started server and what it holds open."""

    server: grpc.aio.Server
    port: int
    tls: TlsFiles
    database: Database

    async def stop(self, grace_s: float = 5.0) -> None:
        """Finish in-flight calls (up to `grace_s`), then close the database."""
        await self.server.stop(grace_s)
        await self.database.close()


async def start_server(config: ServiceConfig) -> RunningServer:
    """Migrate the database, wire the roles and start listening (TLS only)."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = ensure_server_tls(config.data_dir / "tls", config.server.tls_hosts)
    database = Database(config.database)
    # Alembic runs synchronously; keep it off the event loop.
    await asyncio.to_thread(database.migrate, [AUTH_MIGRATIONS])
    tokens = PkTokenVerifier(config.auth.idp, HttpJwksSource())
    auth = AuthService(config.auth, AuthStore(database), tokens)
    server = grpc.aio.server(interceptors=[SessionInterceptor(auth, AUTH_ACCESS)])
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), server)
    credentials = grpc.ssl_server_credentials(
        [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())]
    )
    address = f"{config.server.host}:{config.server.port}"
    if ":" in config.server.host:
        address = f"[{config.server.host}]:{config.server.port}"
    port = server.add_secure_port(address, credentials)
    await server.start()
    return RunningServer(server, port, tls, database)


async def serve_until_stopped(
    config: ServiceConfig, on_ready: Callable[[RunningServer], None] | None = None
) -> None:
    """Run the server until SIGINT or SIGTERM, then stop it cleanly."""
    running = await start_server(config)
    print(READY_LINE.format(host=config.server.host, port=running.port), flush=True)
    if on_ready is not None:
        on_ready(running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(signum)
        await running.stop()
