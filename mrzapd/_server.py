"""Builds and runs the gRPC server with the service roles of one `mrzapd` process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import grpc.aio

from audit import MIGRATIONS as AUDIT_MIGRATIONS
from audit import (
    AuditLog,
    AuditServicer,
    AuditStore,
    RecordingPurger,
    Recordings,
    RecordingStore,
)
from auth import MIGRATIONS as AUTH_MIGRATIONS
from auth import AuthService, AuthStore, SessionInterceptor
from auth._servicer import AuthServicer
from bastion.audit.v1 import audit_service_pb2_grpc
from bastion.auth.v1 import auth_service_pb2_grpc
from bastion.broker.v1 import broker_service_pb2_grpc
from bastion.policy.v1 import policy_service_pb2_grpc
from bastion.registry.v1 import registry_service_pb2_grpc
from broker import MIGRATIONS as BROKER_MIGRATIONS
from broker import SERVER_OPTIONS as BROKER_SERVER_OPTIONS
from broker import (
    BrokerConfig,
    BrokerRole,
    BrokerServicer,
    ConnectedAgents,
    Connections,
    ConnectionStore,
    RecordingIntake,
    Revocations,
    UserLocks,
    load_or_create_broker_id,
    recording_owner,
)
from mrzap.clock import SystemClock
from mrzap.jwks import HttpJwksSource
from mrzap.pktoken import PkTokenVerifier
from mrzap.programs import freeze_startup_objects
from mrzap.storage import Database
from mrzap.tls import TlsFiles, ensure_server_tls
from policy import MIGRATIONS as POLICY_MIGRATIONS
from policy import (
    AccessRequests,
    AccessRequestStore,
    AuthorizationInterceptor,
    GrantKeyring,
    LocalGrantIssuer,
    PolicyDecider,
    PolicyServicer,
    PolicyStore,
    ServiceCredential,
    UserLookup,
    engine_from_spec,
)
from registry import MIGRATIONS as REGISTRY_MIGRATIONS
from registry import Registry, RegistryServicer, RegistryStore, Sweeper, TargetVisibility

from ._access import ACCESS
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
    registry: Registry
    """Targets and their lifecycle; the broker's `TargetDirectory`."""
    audit: AuditLog
    """The audit log every role records to."""
    grant_keys: GrantKeyring
    """The organisation's service grant keys."""
    sweeper: Sweeper
    """The registry's periodic time-based transitions."""
    broker: BrokerRole
    """Agents' control streams held by this process."""
    policies: PolicyStore
    """The organisation's policies, every version."""
    decider: PolicyDecider
    """Decides every RPC and every connection request."""
    access_requests: AccessRequests
    """Just-in-time access requests."""
    grants: LocalGrantIssuer
    """Signs grants for allowed connection requests, and revocations."""
    service_credential: ServiceCredential
    connections: Connections | None = None
    """The broker's connection records."""
    revocations: Revocations | None = None
    """Revocations issued and pushed to agents."""
    recording_purger: RecordingPurger | None = None
    """Deletes recordings past the audit retention period."""
    """What other roles present to call the policy role's service-only methods."""

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop background work, finish in-flight calls (up to `grace_s`), close the database."""
        await self.sweeper.stop()
        if self.recording_purger is not None:
            await self.recording_purger.stop()
        # Refuse new calls first, so that agents told to leave cannot reconnect to this process
        # (and hold it up for the whole grace period); then tell connected agents to go.
        stopping = asyncio.ensure_future(self.server.stop(grace_s))
        await asyncio.sleep(0)
        await self.broker.shutdown()
        if self.revocations is not None:
            await self.revocations.stop()
        if self.connections is not None:
            await self.connections.stop()
        await stopping
        await self.broker.servicer.streams_ended()
        await self.decider.close()
        await self.database.close()


async def start_server(config: ServiceConfig) -> RunningServer:
    """Migrate the database, wire the roles and start listening (TLS only)."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = ensure_server_tls(config.data_dir / "tls", config.server.tls_hosts)
    database = Database(config.database)
    # Alembic and key files are synchronous; keep them off the event loop.
    migrations = [
        AUTH_MIGRATIONS,
        AUDIT_MIGRATIONS,
        REGISTRY_MIGRATIONS,
        POLICY_MIGRATIONS,
        BROKER_MIGRATIONS,
    ]
    await asyncio.to_thread(database.migrate, migrations)
    grant_keys = await asyncio.to_thread(GrantKeyring.load_or_create, config.data_dir / "keys")
    credential = await asyncio.to_thread(ServiceCredential.load_or_create, config.data_dir)
    tokens = PkTokenVerifier(config.auth.idp, HttpJwksSource())
    auth_store = AuthStore(database)
    auth = AuthService(config.auth, auth_store, tokens)
    audit = AuditLog(AuditStore(database))
    recordings = Recordings(RecordingStore(database), audit)
    registry = Registry(RegistryStore(database), audit, config.registry)
    policies = PolicyStore(database)

    async def reload_decider() -> None:
        await decider.reload()

    access_requests = AccessRequests(
        AccessRequestStore(database), policies, audit, on_change=reload_decider
    )
    decider = PolicyDecider(
        policies,
        engine_from_spec(config.policy.engine),
        SystemClock(),
        access_requests.active_access,
    )
    await decider.start()
    grants = LocalGrantIssuer(decider, grant_keys, registry, registry.org_id, audit)
    # One interceptor for every role: classify, authenticate, decide, audit.
    interceptor = AuthorizationInterceptor(SessionInterceptor(auth, ACCESS), decider, audit)
    server = grpc.aio.server(interceptors=[interceptor], options=BROKER_SERVER_OPTIONS)
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), server)
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(audit, recordings), server
    )
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(
            registry,
            auth,
            grant_keys.public_keys,
            config.auth.idp,
            # Users see the targets the policies could let them reach, JIT access included.
            TargetVisibility(policies, access_requests.active_access),
        ),
        server,
    )
    policy_service_pb2_grpc.add_PolicyServiceServicer_to_server(
        PolicyServicer(
            store=policies,
            decider=decider,
            access_requests=access_requests,
            grants=grants,
            grant_keys=grant_keys,
            targets=registry,
            users=UserLookup(auth_store, config.auth),
            audit=audit,
            credential=credential,
            access=ACCESS,
        ),
        server,
    )
    broker_id = await asyncio.to_thread(load_or_create_broker_id, config.data_dir / "broker-id")
    # Revocations in force go to every agent right after its Welcome, so they share the table.
    agents = ConnectedAgents()
    connection_store = ConnectionStore(database)
    revocations = Revocations(grants, agents, connection_store)
    # Agents' recording chunks are verified by the broker and stored by the audit role.
    recording_intake = RecordingIntake(recordings, registry)
    broker = BrokerRole(
        BrokerConfig(
            broker_id=broker_id,
            region=config.broker.region,
            keepalive_interval_s=config.broker.keepalive_interval_s,
        ),
        registry,
        agents=agents,
        on_welcome=revocations.welcome,
        recordings=recording_intake,
    )
    connections = Connections(connection_store, audit, broker_id, broker.relay)
    # A revocation ends this broker's client channels at once (ABORTED), and a user's
    # revocation (a lock) closes their connection records.
    revocations.listen(connections.abort_revoked)
    revocations.after_revoke(connections.close_revoked_users)
    recording_intake.resolve_user = recording_owner(connections, auth_store)

    async def agent_restarted(target_id: str, admitted_at: float) -> None:
        # What ran under the agent's previous process is gone, recordings' missing ends too.
        await recording_intake.abandon(
            await connections.close_ended_by_restart(target_id, admitted_at)
        )

    broker.servicer.on_agent_started = agent_restarted
    broker.servicer.on_connection_ended = connections.close_ended_detached
    broker.add_to_server(server)
    broker_service_pb2_grpc.add_BrokerServiceServicer_to_server(
        BrokerServicer(
            grants,
            broker.relay,
            connections=connections,
            revocations=revocations,
            locks=UserLocks(auth, revocations, audit, connections.live_ids_of),
        ),
        server,
    )
    # The chain includes the CA, so agents can pin it by fingerprint on first contact.
    credentials = grpc.ssl_server_credentials([(tls.server_key.read_bytes(), tls.server_chain())])
    address = f"{config.server.host}:{config.server.port}"
    if ":" in config.server.host:
        address = f"[{config.server.host}]:{config.server.port}"
    port = server.add_secure_port(address, credentials)
    await server.start()

    async def target_terminated(target_id: str) -> None:
        # Its agent has been gone past the cleanup timeout: what it ran is presumed over, and its
        # recordings' missing ends will not come.
        await connections.close_terminated(target_id)
        await recording_intake.abandon_target(target_id)

    sweeper = Sweeper(registry, on_terminated=target_terminated)
    sweeper.start()
    broker.start()
    revocations.start()
    recording_purger = RecordingPurger(recordings, config.audit)
    recording_purger.start()
    return RunningServer(
        server,
        port,
        tls,
        database,
        registry,
        audit,
        grant_keys,
        sweeper,
        broker,
        policies=policies,
        decider=decider,
        access_requests=access_requests,
        grants=grants,
        service_credential=credential,
        connections=connections,
        revocations=revocations,
        recording_purger=recording_purger,
    )


async def serve_until_stopped(
    config: ServiceConfig,
    alongside: Callable[[RunningServer], AbstractAsyncContextManager[object]] | None = None,
) -> None:
    """Run the server until SIGINT or SIGTERM, then stop it cleanly.

    `alongside` is entered once the server is up and left before it stops: what runs with the
    service (the local agent of `mrzapd up`).
    """
    running = await start_server(config)
    freeze_startup_objects()
    print(READY_LINE.format(host=config.server.host, port=running.port), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with alongside(running) if alongside else contextlib.nullcontext():
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(signum)
        await running.stop()
