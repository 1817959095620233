"""zli's connection to the service: TLS channel, and who zli calls as.

zli calls either as the logged-in user (the session token, refreshed silently) or, for scripts
and CI, as a service account whose API key is in `$MRZAP_API_KEY` (no login, no MFA).
"""

from __future__ import annotations

import abc
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.auth.v1 import auth_service_pb2_grpc as auth_grpc
from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2_grpc as policy_grpc
from bastion.registry.v1 import registry_service_pb2_grpc as registry_grpc
from mrzap.errors import InvalidArgument, MrzapError, Unauthenticated, from_rpc_error
from mrzap.keys import public_key_bytes
from mrzap.login_proof import sign_login_proof

from ._oidc import OidcClient
from ._state import LoginState, StateDir

__all__ = [
    "API_KEY_ENV",
    "ApiKeyClient",
    "Client",
    "ServiceClient",
    "anonymous",
    "call",
    "connect",
    "open_channel",
]

#: The environment variable that makes zli call with an API key instead of a login session.
API_KEY_ENV = "MRZAP_API_KEY"

_T = TypeVar("_T")
#: Refresh the session when it has less than this left.
_REFRESH_MARGIN_S = 120.0
_CALL_TIMEOUT_S = 30.0


def open_channel(server: str, ca_file: str) -> grpc.Channel:
    """A TLS channel to the service, trusting `ca_file` (or the system's roots if empty)."""
    roots = None
    if ca_file:
        try:
            roots = Path(ca_file).read_bytes()
        except OSError as error:
            raise InvalidArgument(f"cannot read the CA file {ca_file}: {error.strerror}") from None
    return grpc.secure_channel(server, grpc.ssl_channel_credentials(root_certificates=roots))


def call(method: Callable[..., _T], request: object, token: str = "") -> _T:
    """Make one call, turning a failed call into the matching MrzapError."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    try:
        return method(request, metadata=metadata, timeout=_CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


class Client(abc.ABC):
    """Authenticated calls to the service's roles."""

    channel: grpc.Channel

    @property
    @abc.abstractmethod
    def server(self) -> str:
        """The service address, host:port."""

    @property
    @abc.abstractmethod
    def ca_file(self) -> str:
        """The CA certificate zli trusts for the service; empty for the system's roots."""

    @abc.abstractmethod
    def call(self, method: Callable[..., _T], request: object) -> _T:
        """Make one authenticated call."""

    @property
    def auth(self) -> auth_grpc.AuthServiceStub:
        """The AuthService stub."""
        return auth_grpc.AuthServiceStub(self.channel)

    @property
    def registry(self) -> registry_grpc.RegistryServiceStub:
        """The RegistryService stub."""
        return registry_grpc.RegistryServiceStub(self.channel)

    @property
    def policy(self) -> policy_grpc.PolicyServiceStub:
        """The PolicyService stub."""
        return policy_grpc.PolicyServiceStub(self.channel)


@dataclasses.dataclass
class ApiKeyClient(Client):
    """Calls the service as a service account, with an API key (or with none, if empty)."""

    channel: grpc.Channel
    api_key: str = dataclasses.field(repr=False)
    address: str
    ca_path: str

    @property
    def server(self) -> str:
        """The service address, host:port."""
        return self.address

    @property
    def ca_file(self) -> str:
        """The CA certificate zli trusts for the service; empty for the system's roots."""
        return self.ca_path

    def call(self, method: Callable[..., _T], request: object) -> _T:
        """A call authenticated by the API key, if there is one."""
        return call(method, request, self.api_key)


@dataclasses.dataclass
class ServiceClient(Client):
    """Calls the service as the logged-in user, refreshing the session when it runs low."""

    state_dir: StateDir
    state: LoginState
    channel: grpc.Channel

    @classmethod
    def from_state(cls, state_dir: StateDir) -> ServiceClient:
        """A client for the saved login."""
        state = state_dir.load()
        return cls(state_dir, state, open_channel(state.server, state.ca_file))

    @property
    def server(self) -> str:
        """The service address the session belongs to."""
        return self.state.server

    @property
    def ca_file(self) -> str:
        """The CA certificate zli trusts for the service; empty for the system's roots."""
        return self.state.ca_file

    def call(self, method: Callable[..., _T], request: object) -> _T:
        """An authenticated call; refreshes the session first if it is about to expire."""
        if self.state.session_expires_at - time.time() < _REFRESH_MARGIN_S:
            self.refresh()
        return call(method, request, self.state.session_token)

    def refresh(self) -> None:
        """Get a refreshed ID token from the IdP and extend the service session with it."""
        state = self.state
        if not state.refresh_token:
            return  # nothing to refresh with; the service will say when the session is over
        oidc = OidcClient(state.issuer, state.client_id, state.scopes, state.client_secret)
        try:
            tokens = oidc.refresh(oidc.discover(), state.refresh_token)
        except MrzapError:
            return  # the IdP refused or is down: keep the session for as long as it lasts
        key = self.state_dir.load_key()
        pk_token = mrzap_pb2.PkToken(
            id_token=state.id_token,
            upk=public_key_bytes(key),
            rz=state.rz,
            refreshed_id_token=tokens.id_token,
        )
        timestamp_ms = round(time.time() * 1000)
        request = auth_pb.RefreshSessionRequest(
            pk_token=pk_token,
            timestamp_ms=timestamp_ms,
            proof=sign_login_proof(key, "refresh", pk_token, timestamp_ms),
        )
        response = call(self.auth.RefreshSession, request, state.session_token)
        self.state = dataclasses.replace(
            state,
            refreshed_id_token=tokens.id_token,
            refresh_token=tokens.refresh_token or state.refresh_token,  # not every IdP rotates it
            session_expires_at=response.session.expire_time.ToSeconds(),
        )
        self.state_dir.save(self.state)


def connect(state_dir: StateDir, server: str = "", ca_file: str = "") -> Client:
    """A client for `$MRZAP_API_KEY` if it is set, else for the saved login.

    `server` and `ca_file` come from the command line. With an API key they (else
    `$MRZAP_SERVER` and `$MRZAP_CA_FILE`, else the saved login's) say where to call. A session is
    only ever sent to the server that issued it: naming another server on the command line is
    refused rather than leaking the session token to it.
    """
    api_key = os.environ.get(API_KEY_ENV, "").strip()
    if not api_key:
        client = ServiceClient.from_state(state_dir)
        if server and server != client.state.server:
            raise InvalidArgument(
                f"you are logged in to {client.state.server}, not {server}: "
                f"run `zli login --server {server}`"
            )
        return client
    if not api_key.startswith("mzk_"):
        raise InvalidArgument(f"${API_KEY_ENV} does not hold an API key (they start with mzk_)")
    address, ca_file = _address(state_dir, server, ca_file, f"${API_KEY_ENV}")
    return ApiKeyClient(open_channel(address, ca_file), api_key, address, ca_file)


def anonymous(state_dir: StateDir, server: str = "", ca_file: str = "") -> Client:
    """A client that calls without credentials (for calls that carry their own secret)."""
    address, ca_file = _address(state_dir, server, ca_file, "this command")
    return ApiKeyClient(open_channel(address, ca_file), "", address, ca_file)


def _address(state_dir: StateDir, server: str, ca_file: str, who: str) -> tuple[str, str]:
    """Where to call without a login session: the command line, the environment, the saved login."""
    saved = _saved_state(state_dir)
    address = server or os.environ.get("MRZAP_SERVER", "") or (saved.server if saved else "")
    if not address:
        raise InvalidArgument(f"{who} needs the service's address: set $MRZAP_SERVER or --server")
    ca_file = ca_file or os.environ.get("MRZAP_CA_FILE", "")
    if not ca_file and saved is not None and saved.server == address:
        ca_file = saved.ca_file
    return address, ca_file


def _saved_state(state_dir: StateDir) -> LoginState | None:
    try:
        return state_dir.load()
    except Unauthenticated:
        return None
