"""`zli login`: a new session key, OIDC with the PK-token nonce, Login, then MFA.

PROTOCOL.md section 3: the OIDC nonce commits to the fresh session key, so the ID token the IdP
signs binds the user to that key; the service then checks the token and a signature by the key.
"""

from __future__ import annotations

import dataclasses
import io
import secrets
import time
import webbrowser
from collections.abc import Callable

import segno

from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.auth.v1 import auth_service_pb2_grpc as auth_grpc
from bastion.mrzap.v1 import mrzap_pb2
from mrzap.errors import Unauthenticated
from mrzap.keys import generate_signing_key, public_key_bytes
from mrzap.login_proof import sign_login_proof
from mrzap.pktoken import ClientInstanceClaims

from ._client import call, open_channel
from ._oidc import LoopbackReceiver, OidcClient, Pkce
from ._state import LoginState, StateDir

__all__ = ["LoginOptions", "login"]

_CODE_ATTEMPTS = 3


@dataclasses.dataclass(frozen=True)
class LoginOptions:
    """How to log in."""

    server: str
    """The service address, host:port."""

    ca_file: str
    """The CA certificate that signs the service's TLS certificate; empty for the system roots."""

    open_browser: bool = True
    """Open the system browser, or only print the URL."""

    timeout_s: float = 300.0
    """How long to wait for the browser to come back."""


def login(
    options: LoginOptions,
    state_dir: StateDir,
    say: Callable[[str], None],
    ask: Callable[[str], str],
) -> LoginState:
    """Run the whole login; the session key and tokens are saved only when it succeeds."""
    channel = open_channel(options.server, options.ca_file)
    auth = auth_grpc.AuthServiceStub(channel)
    config = call(auth.GetLoginConfiguration, auth_pb.GetLoginConfigurationRequest())
    oidc = OidcClient(config.issuer, config.client_id, tuple(config.scopes), config.client_secret)
    metadata = oidc.discover()

    key = generate_signing_key()
    claims = ClientInstanceClaims.generate(public_key_bytes(key))
    pkce = Pkce.generate()
    with LoopbackReceiver(secrets.token_urlsafe(32)) as receiver:
        url = oidc.authorization_url(
            metadata, receiver.redirect_uri, receiver.state, claims.nonce(), pkce
        )
        if options.open_browser and webbrowser.open(url):
            say(f"Opened your browser to log in. If it did not open, visit:\n\n  {url}\n")
        else:
            say(f"Open this URL in a browser to log in:\n\n  {url}\n")
        code = receiver.wait(options.timeout_s)
        tokens = oidc.exchange_code(metadata, code, receiver.redirect_uri, pkce)

    pk_token = mrzap_pb2.PkToken(id_token=tokens.id_token, upk=claims.upk, rz=claims.rz)
    timestamp_ms = round(time.time() * 1000)
    response = call(
        auth.Login,
        auth_pb.LoginRequest(
            pk_token=pk_token,
            timestamp_ms=timestamp_ms,
            proof=sign_login_proof(key, "login", pk_token, timestamp_ms),
        ),
    )
    session_token = response.session_token
    status = response.session.mfa_status
    if status == auth_pb.MFA_STATUS_ENROLMENT_REQUIRED:
        enrolment = call(auth.EnrollMfa, auth_pb.EnrollMfaRequest(), session_token)
        say(_enrolment_text(enrolment.otpauth_uri, enrolment.secret))
    if status != auth_pb.MFA_STATUS_DONE:
        session = _verify_code(auth, session_token, ask, say)
    else:
        session = response.session

    state = LoginState(
        server=options.server,
        ca_file=options.ca_file,
        issuer=config.issuer,
        client_id=config.client_id,
        scopes=tuple(config.scopes),
        client_secret=config.client_secret,
        id_token=tokens.id_token,
        rz=claims.rz,
        refresh_token=tokens.refresh_token,
        session_token=session_token,
        session_expires_at=session.expire_time.ToSeconds(),
        email=response.user.email,
    )
    state_dir.save(state, key)
    return state


def _verify_code(
    auth: auth_grpc.AuthServiceStub,
    session_token: str,
    ask: Callable[[str], str],
    say: Callable[[str], None],
) -> auth_pb.Session:
    attempt = 1
    while True:
        code = ask("Enter the 6-digit code from your authenticator app")
        try:
            return call(auth.VerifyMfa, auth_pb.VerifyMfaRequest(code=code), session_token).session
        except Unauthenticated as error:  # a wrong code; a lock-out is final and propagates
            if attempt == _CODE_ATTEMPTS:
                raise
            say(f"{error.message}; try again.")
            attempt += 1


def _enrolment_text(uri: str, secret: str) -> str:
    qr = io.StringIO()
    segno.make(uri, error="m").terminal(out=qr, compact=True)
    return (
        "Set up multi-factor authentication: scan this QR code with an authenticator app\n"
        f"(or enter the secret {secret} by hand).\n\n{qr.getvalue()}\n{uri}\n"
    )
