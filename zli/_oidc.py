"""OIDC authorization code flow with PKCE (S256) and a loopback redirect (RFC 8252).

zli passes the PK-token nonce (PROTOCOL.md section 3) as the OIDC `nonce`, receives the code on
`http://127.0.0.1:<random port>/callback`, checks `state`, and exchanges the code for tokens.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.server
import json
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from mrzap.errors import InvalidArgument, MrzapError, Unauthenticated, Unavailable

__all__ = [
    "LoopbackReceiver",
    "OidcClient",
    "Pkce",
    "TokenSet",
]

_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class TokenSet:
    """What the token endpoint returned."""

    id_token: str = dataclasses.field(repr=False)
    refresh_token: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class Pkce:
    """A PKCE verifier and its S256 challenge."""

    verifier: str = dataclasses.field(repr=False)
    challenge: str

    @classmethod
    def generate(cls) -> Pkce:
        """A fresh verifier (64 random bytes, base64url) and its challenge."""
        verifier = secrets.token_urlsafe(64)
        digest = hashlib.sha256(verifier.encode()).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode())


def _fetch_json(request: urllib.request.Request | str, what: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as error:
        with error:
            detail = _oauth_error(error.read())
        raise Unauthenticated(f"the identity provider refused the {what}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise Unavailable(f"cannot reach the identity provider ({what}): {reason}") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise Unavailable(f"the identity provider's {what} answer is not JSON") from None
    if not isinstance(data, dict):
        raise Unavailable(f"the identity provider's {what} answer is not a JSON object")
    return data


def _oauth_error(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return "unexpected answer"
    if not isinstance(data, dict):
        return "unexpected answer"
    error = str(data.get("error", "error"))
    description = data.get("error_description")
    return f"{error} ({description})" if description else error


@dataclasses.dataclass(frozen=True)
class OidcClient:
    """A public (or confidential) OIDC client of the organisation's IdP."""

    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    client_secret: str = dataclasses.field(default="", repr=False)

    def discover(self) -> dict[str, Any]:
        """The provider's metadata; its `issuer` must be exactly the configured one."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        metadata = _fetch_json(url, "discovery request")
        if metadata.get("issuer") != self.issuer:
            raise InvalidArgument(
                f"the identity provider says it is {metadata.get('issuer')!r}, "
                f"not the configured issuer {self.issuer!r}"
            )
        for key in ("authorization_endpoint", "token_endpoint"):
            if not isinstance(metadata.get(key), str):
                raise Unavailable(f"the identity provider's metadata lacks {key}")
        return metadata

    def authorization_url(
        self, metadata: dict[str, Any], redirect_uri: str, state: str, nonce: str, pkce: Pkce
    ) -> str:
        """The URL the user opens to log in."""
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce.challenge,
                "code_challenge_method": "S256",
            }
        )
        endpoint: str = metadata["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def exchange_code(
        self, metadata: dict[str, Any], code: str, redirect_uri: str, pkce: Pkce
    ) -> TokenSet:
        """Trade the authorization code (and the PKCE verifier) for tokens."""
        return self._token_request(
            metadata,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": pkce.verifier,
            },
            "login",
        )

    def refresh(self, metadata: dict[str, Any], refresh_token: str) -> TokenSet:
        """A new ID token from a refresh token."""
        tokens = self._token_request(
            metadata,
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            "token refresh",
        )
        return TokenSet(tokens.id_token, tokens.refresh_token or refresh_token)

    def _token_request(self, metadata: dict[str, Any], form: dict[str, str], what: str) -> TokenSet:
        form = {**form, "client_id": self.client_id}
        if self.client_secret:
            form["client_secret"] = self.client_secret
        request = urllib.request.Request(  # noqa: S310 - the endpoint comes from pinned discovery
            metadata["token_endpoint"],
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        answer = _fetch_json(request, what)
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise Unauthenticated(f"the identity provider returned no ID token for the {what}")
        refresh_token = answer.get("refresh_token", "")
        return TokenSet(id_token, refresh_token if isinstance(refresh_token, str) else "")


class LoopbackReceiver:
    """A one-shot HTTP listener on 127.0.0.1 that receives the authorization code."""

    def __init__(self, state: str) -> None:
        self.state = state
        self._done = threading.Event()
        self._code: str | None = None
        self._error: MrzapError | None = None
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                return  # the query carries the code: never log it

        self._server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def redirect_uri(self) -> str:
        """Where the IdP sends the browser back to."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/callback"

    def __enter__(self) -> LoopbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait(self, timeout_s: float) -> str:
        """The authorization code, once the browser comes back with the right `state`."""
        if not self._done.wait(timeout_s):
            raise Unauthenticated(f"no answer from the browser within {int(timeout_s)} s")
        if self._error is not None:
            raise self._error
        assert self._code is not None
        return self._code

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(request.path)
        if url.path != "/callback":
            request.send_error(404)
            return
        query = urllib.parse.parse_qs(url.query)
        state = query.get("state", [""])[0]
        if self._done.is_set():
            message = "This login has already finished; you can close this window."
        elif not secrets.compare_digest(state, self.state):
            self._error = Unauthenticated(
                "the login answer does not match this login (state mismatch); try again"
            )
            message = "Login failed: the answer does not belong to this login."
        elif "error" in query:
            description = query.get("error_description", [query["error"][0]])[0]
            self._error = Unauthenticated(f"the identity provider refused the login: {description}")
            message = "Login failed; see the terminal."
        elif query.get("code", [""])[0]:
            self._code = query["code"][0]
            message = "Logged in. You can close this window and return to the terminal."
        else:
            self._error = Unauthenticated("the identity provider sent no authorization code")
            message = "Login failed; see the terminal."
        self._done.set()
        body = f"<!doctype html><title>mrzap</title><p>{message}</p>".encode()
        request.send_response(200)
        request.send_header("Content-Type", "text/html; charset=utf-8")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
