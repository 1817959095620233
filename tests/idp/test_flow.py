"""The development IdP as a client sees it: discovery, JWKS, code + PKCE, refresh, userinfo.

Every test talks HTTP to a real `python -m idp` process (the session's `idp` fixture).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt

from idp.testing import IdpProcess, http_request

from .client import (
    ALICE,
    BOB,
    BOB_PASSWORD,
    CLIENT_SECRET,
    CONFIDENTIAL_CLIENT,
    PUBLIC_CLIENT,
    WEB_REDIRECT,
    AuthRequest,
    error_of,
    log_in,
    redeem,
    token_json,
)


def _discovery(issuer: str) -> dict[str, Any]:
    reply = http_request(f"{issuer}/.well-known/openid-configuration")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    document: dict[str, Any] = json.loads(reply.body)
    return document


def _verify(issuer: str, id_token: str, audience: str = PUBLIC_CLIENT) -> dict[str, Any]:
    """Verify an ID token the way a relying party does: keys from the discovered JWKS."""
    jwks_client = jwt.PyJWKClient(_discovery(issuer)["jwks_uri"], cache_keys=False)
    key = jwks_client.get_signing_key_from_jwt(id_token)
    claims: dict[str, Any] = jwt.decode(
        id_token,
        key.key,
        algorithms=["RS256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["iss", "sub", "aud", "iat", "exp"]},
    )
    return claims


def test_discovery_document(idp: IdpProcess) -> None:
    document = _discovery(idp.issuer)

    assert idp.issuer.startswith("http://127.0.0.1:")
    assert document["issuer"] == idp.issuer
    assert document["authorization_endpoint"] == f"{idp.issuer}/authorize"
    assert document["token_endpoint"] == f"{idp.issuer}/token"
    assert document["userinfo_endpoint"] == f"{idp.issuer}/userinfo"
    assert document["jwks_uri"] == f"{idp.issuer}/jwks"
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert set(document["grant_types_supported"]) == {"authorization_code", "refresh_token"}
    assert "openid" in document["scopes_supported"]
    assert "none" in document["token_endpoint_auth_methods_supported"]


def test_jwks_publishes_public_rsa_key_with_kid(idp: IdpProcess) -> None:
    reply = http_request(_discovery(idp.issuer)["jwks_uri"])
    keys = json.loads(reply.body)["keys"]

    assert reply.status == 200
    assert len(keys) == 1
    (key,) = keys
    assert key["kty"] == "RSA"
    assert key["alg"] == "RS256"
    assert key["use"] == "sig"
    assert key["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private key material published"


def test_code_flow_with_pkce_issues_verifiable_id_token(idp: IdpProcess) -> None:
    request = AuthRequest()

    code = log_in(idp.issuer, request)
    tokens = token_json(redeem(idp.issuer, request, code))
    claims = _verify(idp.issuer, tokens["id_token"])

    assert tokens["token_type"] == "Bearer"
    assert tokens["access_token"]
    assert tokens["refresh_token"]
    assert claims["nonce"] == request.nonce
    assert claims["sub"] == ALICE
    assert claims["aud"] == PUBLIC_CLIENT
    assert claims["azp"] == PUBLIC_CLIENT
    assert claims["email"] == "alice@example.com"
    assert claims["email_verified"] is True
    assert claims["name"] == "Alice Example"
    assert claims["groups"] == ["admins", "developers"]
    assert claims["exp"] - claims["iat"] == 600  # the configured ID token lifetime
    kids = [k["kid"] for k in json.loads(http_request(f"{idp.issuer}/jwks").body)["keys"]]
    assert jwt.get_unverified_header(tokens["id_token"])["kid"] == kids[0]


def test_defaults_for_user_without_optional_fields(idp: IdpProcess) -> None:
    request = AuthRequest()

    code = log_in(idp.issuer, request, BOB, BOB_PASSWORD)
    claims = _verify(idp.issuer, token_json(redeem(idp.issuer, request, code))["id_token"])

    assert claims["sub"] == BOB
    assert claims["name"] == BOB
    assert claims["email_verified"] is False
    assert claims["groups"] == []


def test_userinfo_returns_the_users_claims(idp: IdpProcess) -> None:
    request = AuthRequest()
    tokens = token_json(redeem(idp.issuer, request, log_in(idp.issuer, request)))

    reply = http_request(
        f"{idp.issuer}/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )

    assert reply.status == 200
    info = json.loads(reply.body)
    assert info["sub"] == ALICE
    assert info["email"] == "alice@example.com"
    assert info["groups"] == ["admins", "developers"]


def test_refresh_gives_new_id_token_without_nonce(idp: IdpProcess) -> None:
    request = AuthRequest()
    first = token_json(redeem(idp.issuer, request, log_in(idp.issuer, request)))
    original = _verify(idp.issuer, first["id_token"])

    reply = http_request(
        f"{idp.issuer}/token",
        form={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": PUBLIC_CLIENT,
        },
    )
    second = token_json(reply)
    refreshed = _verify(idp.issuer, second["id_token"])

    assert second["id_token"] != first["id_token"]
    assert "nonce" not in refreshed
    assert (refreshed["iss"], refreshed["sub"], refreshed["aud"]) == (
        original["iss"],
        original["sub"],
        original["aud"],
    )
    assert refreshed["auth_time"] == original["auth_time"]
    # The refresh token is rotated: a new one comes back, the old one is spent.
    assert second["refresh_token"] != first["refresh_token"]


def test_confidential_client_authenticates_with_its_secret(idp: IdpProcess) -> None:
    request = AuthRequest(client_id=CONFIDENTIAL_CLIENT, redirect_uri=WEB_REDIRECT)
    code = log_in(idp.issuer, request)
    basic = base64.b64encode(f"{CONFIDENTIAL_CLIENT}:{CLIENT_SECRET}".encode()).decode()

    reply = redeem(idp.issuer, request, code, headers={"Authorization": f"Basic {basic}"})

    claims = _verify(idp.issuer, token_json(reply)["id_token"], audience=CONFIDENTIAL_CLIENT)
    assert claims["nonce"] == request.nonce


def test_confidential_client_without_its_secret_is_refused(idp: IdpProcess) -> None:
    request = AuthRequest(client_id=CONFIDENTIAL_CLIENT, redirect_uri=WEB_REDIRECT)
    code = log_in(idp.issuer, request)
    wrong = base64.b64encode(f"{CONFIDENTIAL_CLIENT}:not-the-secret".encode()).decode()

    without = redeem(idp.issuer, request, code)
    with_wrong = redeem(idp.issuer, request, code, headers={"Authorization": f"Basic {wrong}"})

    assert without.status in (400, 401)
    assert error_of(without) == "invalid_client"
    assert with_wrong.status == 401
    assert error_of(with_wrong) == "invalid_client"


def test_responses_are_not_cacheable_nor_frameable(idp: IdpProcess) -> None:
    page = http_request(AuthRequest().url(idp.issuer))

    assert page.status == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
