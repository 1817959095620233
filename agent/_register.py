"""`mrzap-agent register`: turn a registration key or activation token into a registered target.

DESIGN.md section 3, flow 3: a registration key buys a single-use activation token
(`CreateActivationToken`); the agent generates its Ed25519 key and spends the token on
`RegisterAgent`, which returns the target id, the organisation, the grant keys to pin and the
identity provider to trust. All of it is stored in the configuration directory.
"""

from __future__ import annotations

import dataclasses
import socket

import grpc

from bastion.registry.v1 import registry_service_pb2 as pb
from bastion.registry.v1 import registry_service_pb2_grpc as pb_grpc
from mrzap import __version__
from mrzap.config import IdpConfig
from mrzap.errors import AlreadyExists, InvalidArgument, from_rpc_error
from mrzap.keys import generate_signing_key, public_key_bytes

from ._config import AgentConfig, AgentFiles, GrantKeyPin
from ._pinning import fetch_pinned_ca, split_server

__all__ = ["RegistrationRequest", "register"]

_CALL_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class RegistrationRequest:
    """What `mrzap-agent register` was asked to do."""

    server: str
    """The service's host:port."""

    registration_key: str = ""
    """A registration key secret; exclusive with `activation_token`."""

    activation_token: str = ""
    """An activation token; exclusive with `registration_key`."""

    name: str = ""
    """The target's name; empty means the host name."""

    environment_id: str = ""
    """The environment asked for (a registration key's own environment takes precedence)."""

    region: str = ""
    """The region the agent runs in."""

    ca_file_pem: bytes | None = None
    """A CA certificate to trust, given as a file."""

    ca_fingerprint: str = ""
    """The SHA-256 fingerprint of the CA to learn from the server's TLS chain."""

    force: bool = False
    """Replace an existing registration."""

    def __post_init__(self) -> None:
        split_server(self.server)
        if bool(self.registration_key) == bool(self.activation_token):
            raise InvalidArgument("give either a registration key or an activation token")
        if self.ca_file_pem is not None and self.ca_fingerprint:
            raise InvalidArgument("give either a CA file or a CA fingerprint, not both")


def register(request: RegistrationRequest, files: AgentFiles) -> AgentConfig:
    """Register with the service and store the result in `files`."""
    if files.registered() and not request.force:
        # Checked before any call: a refused run must not spend a registration key's token.
        raise AlreadyExists(
            f"{files.directory} already holds a registration; use --force to replace it"
        )
    ca_pem = request.ca_file_pem
    if request.ca_fingerprint:
        ca_pem = fetch_pinned_ca(request.server, request.ca_fingerprint)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    hostname = socket.gethostname()
    with grpc.secure_channel(request.server, credentials) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        token = request.activation_token
        try:
            if request.registration_key:
                created = stub.CreateActivationToken(
                    pb.CreateActivationTokenRequest(
                        registration_key=request.registration_key,
                        target_name=request.name or hostname,
                        environment_id=request.environment_id,
                    ),
                    timeout=_CALL_TIMEOUT_S,
                )
                token = created.activation_token
            key = generate_signing_key()
            answer = stub.RegisterAgent(
                pb.RegisterAgentRequest(
                    activation_token=token,
                    public_key=public_key_bytes(key),
                    hostname=hostname,
                    agent_version=__version__,
                    name=request.name,
                    region=request.region,
                ),
                timeout=_CALL_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
    config = AgentConfig(
        server=request.server,
        target_id=answer.target.id,
        org_id=answer.org_id,
        name=answer.target.name,
        grant_keys=tuple(GrantKeyPin(k.key_id, bytes(k.public_key)) for k in answer.grant_keys),
        idp=IdpConfig(
            issuer=answer.idp.issuer,
            client_id=answer.idp.client_id,
            allowed_email_domains=frozenset(answer.idp.allowed_email_domains),
            hosted_domain=answer.idp.hosted_domain or None,
            tenant_id=answer.idp.tenant_id or None,
            max_session_age_s=answer.idp.max_session_age.ToTimedelta().total_seconds() or 12 * 3600,
        ),
        ca_pem=ca_pem,
    )
    files.save(config, key)
    return config
