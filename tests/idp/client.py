"""What a relying party (zli) does against the IdP, step by step, for the tests to reuse."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from idp import hash_password
from idp.testing import HttpReply, http_request, submit_login_form

PUBLIC_CLIENT = "zli"
OTHER_PUBLIC_CLIENT = "other-cli"
CONFIDENTIAL_CLIENT = "web"
CLIENT_SECRET = "web-client-secret"
REGISTERED_REDIRECT = "http://127.0.0.1/callback"
# Another port than the registered URI's: RFC 8252 §7.3 says any loopback port must match.
REDIRECT = "http://127.0.0.1:49152/callback"
WEB_REDIRECT = "https://mrzap.example/oidc/callback"
ALICE = "alice"
ALICE_PASSWORD = "correct horse battery staple"
BOB = "bob"
BOB_PASSWORD = "hunter2 but longer"


def write_config(path: Path, *, id_token_lifetime: int = 600) -> Path:
    """A config with the public client `zli`, the confidential client `web`, alice and bob."""
    path.write_text(
        f"""
[tokens]
id_token_lifetime_seconds = {id_token_lifetime}

[[clients]]
client_id = "{PUBLIC_CLIENT}"
redirect_uris = ["{REGISTERED_REDIRECT}"]

[[clients]]
client_id = "{OTHER_PUBLIC_CLIENT}"
redirect_uris = ["{REGISTERED_REDIRECT}"]

[[clients]]
client_id = "{CONFIDENTIAL_CLIENT}"
redirect_uris = ["{WEB_REDIRECT}"]
client_secret_hash = "{hash_password(CLIENT_SECRET)}"

[[users]]
username = "{ALICE}"
password_hash = "{hash_password(ALICE_PASSWORD)}"
email = "alice@example.com"
email_verified = true
name = "Alice Example"
groups = ["admins", "developers"]

[[users]]
username = "{BOB}"
password_hash = "{hash_password(BOB_PASSWORD)}"
email = "bob@example.com"
""",
        encoding="utf-8",
    )
    return path


@dataclass
class AuthRequest:
    """The parameters a client (zli) sends to /authorize, with the PKCE verifier it keeps."""

    client_id: str = PUBLIC_CLIENT
    redirect_uri: str = REDIRECT
    scope: str = "openid email profile groups"
    state: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    code_verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    code_challenge_method: str | None = "S256"
    extra: dict[str, str] = field(default_factory=dict)
    omit: tuple[str, ...] = ()

    @property
    def code_challenge(self) -> str:
        digest = hashlib.sha256(self.code_verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def url(self, issuer: str) -> str:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": self.code_challenge,
            **self.extra,
        }
        if self.code_challenge_method is not None:
            params["code_challenge_method"] = self.code_challenge_method
        for name in self.omit:
            params.pop(name, None)
        return f"{issuer}/authorize?{urlencode(params)}"


def redirect_params(reply: HttpReply) -> dict[str, str]:
    """The query parameters of the redirect the IdP answered with."""
    assert reply.status == 302, reply.text
    query = parse_qs(urlsplit(reply.headers["Location"]).query)
    return {key: values[0] for key, values in query.items()}


def log_in(
    issuer: str, request: AuthRequest, username: str = ALICE, password: str = ALICE_PASSWORD
) -> str:
    """Sign in through the form and return the authorization code from the redirect."""
    reply = submit_login_form(request.url(issuer), username, password)
    location = reply.headers.get("Location", "")
    assert location.startswith(f"{request.redirect_uri}?"), location
    params = redirect_params(reply)
    assert params["state"] == request.state
    return params["code"]


def redeem(
    issuer: str,
    request: AuthRequest,
    code: str,
    *,
    verifier: str | None = None,
    redirect_uri: str | None = None,
    headers: dict[str, str] | None = None,
) -> HttpReply:
    """Exchange `code` at the token endpoint as the public client would."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri or request.redirect_uri,
        "client_id": request.client_id,
        "code_verifier": request.code_verifier if verifier is None else verifier,
    }
    if not form["code_verifier"]:
        del form["code_verifier"]
    return http_request(f"{issuer}/token", form=form, headers=headers)


def token_json(reply: HttpReply) -> dict[str, Any]:
    """The JSON body of a token endpoint reply, asserting it succeeded."""
    assert reply.status == 200, reply.text
    document: dict[str, Any] = json.loads(reply.body)
    return document


def error_of(reply: HttpReply) -> str:
    """The OAuth `error` code of a JSON error reply."""
    document: dict[str, Any] = json.loads(reply.body)
    return str(document["error"])
