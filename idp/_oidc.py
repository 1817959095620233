"""The OpenID Connect provider itself, on authlib's framework-neutral core.

`OidcProvider` is authlib's `AuthorizationServer` with the models this IdP needs: the
authorization code grant with PKCE S256 required (RFC 7636) and `nonce` required (OIDC Core
§3.1.2.1), the refresh token grant with rotation, RS256 ID tokens whose header carries the
signing key's `kid`, and the UserInfo endpoint (OIDC Core §5.3). The ID token is what zli turns
into a PK token (PROTOCOL.md §3): its `nonce` is the commitment to the user's session key, so the
nonce is required and copied verbatim, and a refreshed ID token has the same iss/sub/aud and no
nonce. The HTTP layer (`_server.py`) builds an `HttpRequest` per request and writes back the
`HttpResponse` it gets.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import (  # type: ignore[import-untyped]
    AuthorizationServer,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
    ResourceProtector,
)
from authlib.oauth2.rfc6749.grants import (  # type: ignore[import-untyped]
    AuthorizationCodeGrant,
    RefreshTokenGrant,
)
from authlib.oauth2.rfc6750 import (  # type: ignore[import-untyped]
    BearerTokenGenerator,
    BearerTokenValidator,
)
from authlib.oauth2.rfc7636 import CodeChallenge  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636.challenge import (  # type: ignore[import-untyped]
    compare_s256_code_challenge,
)
from authlib.oidc.core.grants import OpenIDCode, OpenIDToken  # type: ignore[import-untyped]
from joserfc.jwk import RSAKey

from ._config import ClientConfig, DevIdpConfig, UserConfig, is_loopback_host
from ._keys import ALGORITHM, SigningKeys
from ._pages import error_page, login_page
from ._passwords import hash_password, verify_password
from ._store import CodeRecord, GrantStore, TokenRecord

__all__ = ["SCOPES", "HttpRequest", "HttpResponse", "OidcProvider"]

SCOPES = ("openid", "profile", "email", "groups", "offline_access")
"""The scopes this IdP knows; the ID token always carries every claim it has."""
_CLAIMS = (
    "iss", "sub", "aud", "azp", "iat", "exp", "auth_time", "nonce", "amr", "at_hash",
    "email", "email_verified", "name", "groups",
)  # fmt: skip
_TOKEN_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
_HTML = "text/html; charset=utf-8"


# -- HTTP request and response as authlib sees them ------------------------------------------


class _Payload(OAuth2Payload):  # type: ignore[misc]
    """The request's parameters: the query for GET, the form body for POST (never both)."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._datalist: dict[str, list[str]] = {}
        for key, value in pairs:
            self._datalist.setdefault(key, []).append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class HttpRequest(OAuth2Request):  # type: ignore[misc]
    """One HTTP request to an OAuth endpoint, already parsed by the HTTP layer."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Message,
        query: Sequence[tuple[str, str]],
        form: Sequence[tuple[str, str]],
    ) -> None:
        # The HTTP layer's headers object: case-insensitive `get`, which authlib relies on.
        super().__init__(method, uri, headers=headers)
        self.pairs = tuple(form if method == "POST" else query)
        """The parameters of the request, in order, duplicates kept."""
        self._args = dict(reversed(query))
        self._form = dict(reversed(form))
        self.payload = _Payload(self.pairs)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass(frozen=True)
class HttpResponse:
    """What to send back: status, body and headers."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, document: object) -> HttpResponse:
        """A JSON response (never cached: token and error responses must not be)."""
        body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        return cls(status, body, (("Content-Type", "application/json"),))

    @classmethod
    def html(cls, status: int, page: str) -> HttpResponse:
        """An HTML page."""
        return cls(status, page.encode("utf-8"), (("Content-Type", _HTML),))


# -- models authlib asks for -------------------------------------------------------------------


@dataclass(frozen=True)
class _Client:
    """A registered client, with the checks authlib's `ClientMixin` describes."""

    config: ClientConfig

    def get_client_id(self) -> str:
        return self.config.client_id

    def get_default_redirect_uri(self) -> str | None:
        # OIDC Core §3.1.2.1 makes redirect_uri REQUIRED: never fill it in for the client.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        # Unknown scopes were already refused (scopes_supported); none asked means openid alone.
        return scope or "openid"

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return any(_redirect_matches(r, redirect_uri) for r in self.config.redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        if self.config.client_secret_hash is None:
            return False
        return verify_password(client_secret, self.config.client_secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.config.is_public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


def _redirect_matches(registered: str, requested: str) -> bool:
    """Exact match, except that on a loopback IP literal over http any port matches
    (RFC 8252 §7.3: a native app listens on whatever port is free)."""
    if requested == registered:
        return True
    try:
        want, got = urlsplit(registered), urlsplit(requested)
        got_port = got.port
    except ValueError:
        return False
    host = want.hostname or ""
    return (
        want.scheme == "http"
        and host != "localhost"  # §7.3 names IP literals; "localhost" may resolve elsewhere
        and is_loopback_host(host)
        and got.scheme == "http"
        and got.hostname == want.hostname
        and got_port is not None
        and got.username is None
        and got.password is None
        and got.path == want.path
        and got.query == want.query
        and not got.fragment
        and "#" not in requested
    )


@dataclass(frozen=True)
class _Subject:
    """The logged-in user as authlib's `request.user`, with the login the tokens belong to."""

    user: UserConfig
    auth_time: int
    session_expires_at: float
    family: str


@dataclass(frozen=True)
class _Code:
    """A redeemed authorization code, as authlib's OIDC `AuthorizationCodeMixin`."""

    record: CodeRecord

    @property
    def code_challenge(self) -> str:
        return self.record.code_challenge

    @property
    def code_challenge_method(self) -> str:
        return self.record.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.scope

    def get_nonce(self) -> str:
        return self.record.nonce

    def get_auth_time(self) -> int:
        return self.record.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["pwd"]


@dataclass(frozen=True)
class _Token:
    """A live access or refresh token, as authlib's `TokenMixin`."""

    record: TokenRecord
    client: _Client
    subject: _Subject

    def check_client(self, client: _Client) -> bool:
        return client.get_client_id() == self.record.client_id

    def get_scope(self) -> str:
        return self.record.scope

    @property
    def scope(self) -> str:
        return self.record.scope

    def is_expired(self) -> bool:
        return False  # the store only hands out live tokens

    def is_revoked(self) -> bool:
        return self.record.revoked

    def get_user(self) -> _Subject:
        return self.subject

    def get_client(self) -> _Client:
        return self.client


# -- grants and their extensions -------------------------------------------------------------


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    """Authorization code grant (RFC 6749 §4.1) for public and confidential clients."""

    TOKEN_ENDPOINT_AUTH_METHODS = _TOKEN_AUTH_METHODS
    server: OidcProvider

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        scope = self.request.payload.scope or ""
        if "openid" not in scope.split():
            # Without openid authlib skips the nonce check and issues no ID token: this IdP
            # exists to issue ID tokens, so a plain OAuth request is refused.
            raise InvalidScopeError(
                "The 'openid' scope is required.",
                redirect_uri=redirect_uri,
                state=self.request.payload.state,
            )
        return redirect_uri

    def save_authorization_code(self, code: str, request: HttpRequest) -> None:
        self.server.save_code(code, request)

    def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
        record = self.server.store.take_code(code, client.get_client_id())
        return None if record is None else _Code(record)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        # Already marked used by query_authorization_code; the used record stays until it
        # expires so that a replay is recognised (and revokes what the code produced).
        pass

    def authenticate_user(self, authorization_code: _Code) -> _Subject | None:
        record = authorization_code.record
        return self.server.subject(record.username, record.auth_time, record.family)


class _RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    """Refresh token grant (RFC 6749 §6) with rotation: each refresh token works once."""

    TOKEN_ENDPOINT_AUTH_METHODS = _TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: OidcProvider

    def authenticate_refresh_token(self, refresh_token: str) -> _Token | None:
        client: _Client = self.request.client
        record = self.server.store.take_refresh_token(refresh_token, client.get_client_id())
        if record is None:
            return None
        subject = self.server.subject(record.username, record.auth_time, record.family)
        return None if subject is None else _Token(record, client, subject)

    def authenticate_user(self, refresh_token: _Token) -> _Subject:
        return refresh_token.subject

    def revoke_old_credential(self, refresh_token: _Token) -> None:
        pass  # authenticate_refresh_token already redeemed it


class _RequireS256(CodeChallenge):  # type: ignore[misc]
    """PKCE (RFC 7636) required for every client, with S256 only: `plain` and a missing
    challenge are refused at the authorization endpoint, a missing verifier at the token one."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ("S256",)
    CODE_CHALLENGE_METHODS = {"S256": compare_s256_code_challenge}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: _CodeGrant, redirect_uri: str) -> None:
        # authlib lets a request without PKCE through (and takes a missing method as plain):
        # demand S256 here; authlib then refuses a missing or malformed challenge. At the token
        # endpoint authlib already requires the verifier whenever the code has a challenge,
        # which every code here has, whatever the client type.
        if grant.request.payload.data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE is required, with code_challenge_method S256.")
        super().validate_code_challenge(grant, redirect_uri)


class _IdTokenClaims:
    """What goes into an ID token, shared by the code and the refresh grants."""

    _provider: OidcProvider

    def get_client_algorithm(self, client: _Client) -> str:
        return ALGORITHM

    def get_encode_header(self, client: _Client) -> dict[str, str]:
        # The kid lets verifiers pick the right key from the JWKS across rotations.
        return {"alg": ALGORITHM, "kid": self._provider.keys.kid, "typ": "JWT"}

    def resolve_client_private_key(self, client: _Client) -> RSAKey:
        return self._provider.keys.current

    def get_compatible_claims(self, request: HttpRequest) -> dict[str, object]:
        client_id = request.client.get_client_id()
        subject: _Subject = request.user
        now = int(self._provider.store.now())
        return {
            "iss": self._provider.issuer,
            "aud": client_id,
            "azp": client_id,
            "iat": now,
            "exp": now + self._provider.config.id_token_lifetime_seconds,
            "auth_time": subject.auth_time,
        }

    def generate_user_info(self, user: _Subject, scope: str) -> dict[str, object]:
        return _user_claims(user.user)


class _OpenIDCode(_IdTokenClaims, OpenIDCode):  # type: ignore[misc]
    """ID token for the code grant: nonce required, copied into the token."""

    def __init__(self, provider: OidcProvider) -> None:
        super().__init__(require_nonce=True)
        self._provider = provider

    def exists_nonce(self, nonce: str, request: HttpRequest) -> bool:
        return self._provider.store.nonce_seen(request.payload.client_id, nonce)


class _OpenIDRefresh(_IdTokenClaims, OpenIDToken):  # type: ignore[misc]
    """ID token for the refresh grant: same iss/sub/aud, no nonce (no code, so no nonce claim)."""

    def __init__(self, provider: OidcProvider) -> None:
        self._provider = provider


class _BearerValidator(BearerTokenValidator):  # type: ignore[misc]
    """Looks access tokens up for the UserInfo endpoint (RFC 6750)."""

    def __init__(self, provider: OidcProvider) -> None:
        super().__init__()
        self._provider = provider

    def authenticate_token(self, token_string: str) -> _Token | None:
        record = self._provider.store.find_access_token(token_string)
        if record is None:
            return None
        client = self._provider.query_client(record.client_id)
        subject = self._provider.subject(record.username, record.auth_time, record.family)
        if client is None or subject is None:
            return None
        return _Token(record, client, subject)


def _user_claims(user: UserConfig) -> dict[str, object]:
    return {
        "sub": user.sub,
        "name": user.name,
        "email": user.email,
        "email_verified": user.email_verified,
        "groups": list(user.groups),
    }


def _new_token(**_: object) -> str:
    return secrets.token_urlsafe(32)


# -- the provider ------------------------------------------------------------------------------


class OidcProvider(AuthorizationServer):  # type: ignore[misc]
    """The development OIDC provider: endpoints as methods from `HttpRequest` to `HttpResponse`.

    Thread-safe: the configuration and keys are immutable and the store has its own lock.
    """

    def __init__(
        self, config: DevIdpConfig, keys: SigningKeys, issuer: str, store: GrantStore | None = None
    ) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.config = config
        self.keys = keys
        self.issuer = issuer.rstrip("/")
        self.store = store or GrantStore()
        self._clients = {c.client_id: _Client(c) for c in config.clients}
        # Checked against for unknown usernames so that a login takes as long whether or not
        # the user exists.
        self._decoy_hash = hash_password(secrets.token_urlsafe(16))
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=_new_token,
                refresh_token_generator=_new_token,
                expires_generator=config.access_token_lifetime_seconds,
            ),
        )
        self.register_grant(_CodeGrant, [_RequireS256(), _OpenIDCode(self)])
        self.register_grant(_RefreshGrant, [_OpenIDRefresh(self)])
        self._protector = ResourceProtector()
        self._protector.register_token_validator(_BearerValidator(self))

    # authlib's AuthorizationServer hooks

    def query_client(self, client_id: str) -> _Client | None:
        return self._clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: HttpRequest) -> None:
        subject: _Subject = request.user
        now = self.store.now()
        access = TokenRecord(
            client_id=request.client.get_client_id(),
            username=subject.user.username,
            scope=token.get("scope", ""),
            auth_time=subject.auth_time,
            expires_at=min(
                now + self.config.access_token_lifetime_seconds, subject.session_expires_at
            ),
            session_expires_at=subject.session_expires_at,
            family=subject.family,
        )
        refresh_token = token.get("refresh_token")
        refresh = replace(access, expires_at=subject.session_expires_at)
        self.store.put_tokens(token["access_token"], access, refresh_token, refresh)

    def create_oauth2_request(self, request: HttpRequest) -> HttpRequest:
        return request

    def handle_response(
        self, status: int, body: object, headers: Sequence[tuple[str, str]]
    ) -> HttpResponse:
        if isinstance(body, dict):
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        else:
            data = str(body).encode("utf-8")
        return HttpResponse(status, data, tuple(headers))

    def send_signal(self, name: str, *args: object, **kwargs: object) -> None:
        pass  # no signal system here; authlib's base class would raise

    # helpers for the grants

    def subject(self, username: str, auth_time: int, family: str) -> _Subject | None:
        """The user behind a code or token, or None if the user is no longer configured."""
        user = self.config.user(username)
        if user is None:
            return None
        session_end = auth_time + self.config.refresh_token_lifetime_seconds
        return _Subject(user, auth_time, session_end, family)

    def save_code(self, code: str, request: HttpRequest) -> None:
        """Keep a just-issued authorization code with what it was issued for."""
        subject: _Subject = request.user
        data = request.payload.data
        now = self.store.now()
        record = CodeRecord(
            client_id=request.client.get_client_id(),
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            nonce=data["nonce"],
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            username=subject.user.username,
            auth_time=subject.auth_time,
            expires_at=now + self.config.code_lifetime_seconds,
            family=subject.family,
        )
        nonce_until = record.expires_at + self.config.id_token_lifetime_seconds
        self.store.put_code(code, record, nonce_until)

    def _login(self, username: str, password: str) -> UserConfig | None:
        user = self.config.user(username)
        if user is None:
            verify_password(password, self._decoy_hash)
            return None
        return user if verify_password(password, user.password_hash) else None

    # endpoints

    def discovery(self) -> HttpResponse:
        """`/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §3)."""
        base = self.issuer
        return HttpResponse.json(
            200,
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "userinfo_endpoint": f"{base}/userinfo",
                "jwks_uri": f"{base}/jwks",
                "scopes_supported": list(SCOPES),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": [ALGORITHM],
                "token_endpoint_auth_methods_supported": _TOKEN_AUTH_METHODS,
                "code_challenge_methods_supported": ["S256"],
                "claims_supported": list(_CLAIMS),
                "request_parameter_supported": False,
                "request_uri_parameter_supported": False,
            },
        )

    def jwks(self) -> HttpResponse:
        """The JWKS: the current public key and the previous one after a rotation."""
        return HttpResponse.json(200, self.keys.public_jwks())

    def authorize(self, request: HttpRequest) -> HttpResponse:
        """`/authorize`: GET shows the login form, POST checks it and redirects with a code."""
        try:
            grant = self.get_consent_grant(request, end_user=None)
        except OAuth2Error as error:
            return self._authorize_error(request, error)
        except ValueError:
            # authlib refuses to build an error description from a URI with characters that
            # may not appear in one (RFC 6749 §5.2); whatever the URI was, it is not registered.
            return HttpResponse.html(400, error_page("invalid_request", "Invalid request."))
        if request.method != "POST":
            return HttpResponse.html(200, login_page(request.pairs, request.payload.client_id))
        username = request.form.get("username", "")
        user = self._login(username, request.form.get("password", ""))
        if user is None:
            page = login_page(
                request.pairs, request.payload.client_id, username, "Wrong username or password."
            )
            return HttpResponse.html(200, page)
        subject = _Subject(
            user,
            auth_time=int(self.store.now()),
            session_expires_at=0,  # fixed when the code is redeemed (see `subject`)
            family=secrets.token_urlsafe(16),
        )
        response: HttpResponse = self.create_authorization_response(
            request, grant_user=subject, grant=grant
        )
        return response

    def _authorize_error(self, request: HttpRequest, error: OAuth2Error) -> HttpResponse:
        if error.redirect_uri:
            # The client and its redirect URI were validated: tell the client (RFC 6749 §4.1.2.1).
            response: HttpResponse = self.handle_error_response(request, error)
            return response
        # Never redirect to an unverified URI: show the error to the user instead.
        description = error.description or "The request is not valid."
        return HttpResponse.html(error.status_code or 400, error_page(error.error, description))

    def token(self, request: HttpRequest) -> HttpResponse:
        """`/token`: the authorization code and refresh token grants."""
        response: HttpResponse = self.create_token_response(request)
        return response

    def userinfo(self, request: HttpRequest) -> HttpResponse:
        """`/userinfo` (OIDC Core §5.3), for a bearer access token with the openid scope."""
        try:
            token: _Token = self._protector.validate_request(["openid"], request)
        except OAuth2Error as error:
            response: HttpResponse = self.handle_error_response(request, error)
            return response
        return HttpResponse.json(200, _user_claims(token.subject.user))
