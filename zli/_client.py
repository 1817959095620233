"""zli's connection to the service: TLS channel, session token, and silent session refresh."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.auth.v1 import auth_service_pb2_grpc as auth_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.errors import InvalidArgument, MrzapError, from_rpc_error
from mrzap.keys import public_key_bytes
from mrzap.login_proof import sign_login_proof

from ._oidc import OidcClient
from ._state import LoginState, StateDir

__all__ = ["ServiceClient", "call", "open_channel"]

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


@dataclasses.dataclass
class ServiceClient:
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
    def auth(self) -> auth_grpc.AuthServiceStub:
        """The AuthService stub."""
        return auth_grpc.AuthServiceStub(self.channel)

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
