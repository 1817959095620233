"""Every check of the IdP's login and token endpoints has a test that fails if it is removed.

All against a real `python -m idp` process over HTTP (the session's `idp` fixture).
"""

from __future__ import annotations

import base64
import json

import pytest

from idp.testing import IdpProcess, http_request, submit_login_form

from .client import (
    ALICE,
    ALICE_PASSWORD,
    CLIENT_SECRET,
    CONFIDENTIAL_CLIENT,
    OTHER_PUBLIC_CLIENT,
    PUBLIC_CLIENT,
    WEB_REDIRECT,
    AuthRequest,
    error_of,
    log_in,
    redeem,
    redirect_params,
    token_json,
)


def _userinfo_status(issuer: str, access_token: str) -> int:
    reply = http_request(f"{issuer}/userinfo", headers={"Authorization": f"Bearer {access_token}"})
    return reply.status


def _refresh(issuer: str, refresh_token: str, client_id: str = PUBLIC_CLIENT) -> dict[str, str]:
    reply = http_request(
        f"{issuer}/token",
        form={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
        },
    )
    document: dict[str, str] = json.loads(reply.body)
    return document


@pytest.mark.parametrize(
    ("username", "password"),
    [(ALICE, "wrong password"), ("mallory", ALICE_PASSWORD), (ALICE, "")],
    ids=["wrong-password", "unknown-user", "empty-password"],
)
def test_wrong_credentials_show_the_form_again(
    idp: IdpProcess, username: str, password: str
) -> None:
    reply = submit_login_form(AuthRequest().url(idp.issuer), username, password)

    assert reply.status == 200
    assert "Location" not in reply.headers
    assert "Wrong username or password." in reply.text
    assert 'name="password"' in reply.text


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"omit": ("code_challenge", "code_challenge_method")}, "invalid_request"),
        ({"omit": ("code_challenge",)}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        # Without a method RFC 7636 means plain: refused just the same.
        ({"code_challenge_method": None}, "invalid_request"),
        ({"omit": ("nonce",)}, "invalid_request"),
        ({"scope": "email profile"}, "invalid_scope"),
        ({"scope": "openid admin"}, "invalid_scope"),
        ({"extra": {"response_type": "token"}}, "unsupported_response_type"),
        ({"extra": {"prompt": "none"}}, "login_required"),
    ],
    ids=[
        "missing-pkce",
        "missing-code-challenge",
        "plain-pkce",
        "pkce-method-missing",
        "missing-nonce",
        "missing-openid-scope",
        "unknown-scope",
        "implicit-flow",
        "prompt-none",
    ],
)
def test_invalid_authorization_request_is_sent_back_to_the_client(
    idp: IdpProcess, change: dict[str, object], error: str
) -> None:
    request = AuthRequest(**change)  # type: ignore[arg-type]

    reply = http_request(request.url(idp.issuer))

    params = redirect_params(reply)
    assert reply.headers["Location"].startswith(f"{request.redirect_uri}?")
    assert params["error"] == error
    assert params["state"] == request.state
    assert "code" not in params


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:49152/other",
        "http://127.0.0.1:49152/callback/more",
        "http://127.0.0.1:49152/callback?x=1",
        "http://127.0.0.2:49152/callback",
        "http://localhost:49152/callback",
        "https://127.0.0.1:49152/callback",
        "http://evil.example/callback",
        "http://user@127.0.0.1:49152/callback",
        "http://127.0.0.1:49152/callback#fragment",
        'http://127.0.0.1:49152/"callback',
    ],
)
def test_unregistered_redirect_uri_is_never_redirected_to(
    idp: IdpProcess, redirect_uri: str
) -> None:
    request = AuthRequest(redirect_uri=redirect_uri)

    page = http_request(request.url(idp.issuer))
    form = submit_login_form(request.url(idp.issuer), ALICE, ALICE_PASSWORD)

    assert page.status == 400
    assert "Location" not in page.headers
    assert "Sign-in error" in page.text
    assert form.status == 400
    assert "Location" not in form.headers


def test_missing_redirect_uri_is_refused(idp: IdpProcess) -> None:
    reply = http_request(AuthRequest(omit=("redirect_uri",)).url(idp.issuer))

    assert reply.status == 400
    assert "Location" not in reply.headers


def test_unknown_client_is_refused(idp: IdpProcess) -> None:
    reply = http_request(AuthRequest(client_id="stranger").url(idp.issuer))

    assert reply.status in (400, 401)
    assert "Location" not in reply.headers


def test_wrong_code_verifier_is_refused(idp: IdpProcess) -> None:
    request = AuthRequest()
    code = log_in(idp.issuer, request)

    reply = redeem(idp.issuer, request, code, verifier="x" * 64)

    assert reply.status == 400
    assert error_of(reply) == "invalid_grant"


def test_missing_code_verifier_is_refused(idp: IdpProcess) -> None:
    request = AuthRequest()
    code = log_in(idp.issuer, request)

    reply = redeem(idp.issuer, request, code, verifier="")

    assert reply.status == 400
    assert error_of(reply) == "invalid_request"


def test_confidential_client_also_needs_its_code_verifier(idp: IdpProcess) -> None:
    request = AuthRequest(client_id=CONFIDENTIAL_CLIENT, redirect_uri=WEB_REDIRECT)
    code = log_in(idp.issuer, request)
    basic = base64.b64encode(f"{CONFIDENTIAL_CLIENT}:{CLIENT_SECRET}".encode()).decode()

    reply = redeem(
        idp.issuer, request, code, verifier="", headers={"Authorization": f"Basic {basic}"}
    )

    assert reply.status == 400
    assert error_of(reply) == "invalid_request"


def test_code_works_once_and_a_replay_revokes_its_tokens(idp: IdpProcess) -> None:
    request = AuthRequest()
    code = log_in(idp.issuer, request)
    tokens = token_json(redeem(idp.issuer, request, code))
    assert _userinfo_status(idp.issuer, tokens["access_token"]) == 200

    replay = redeem(idp.issuer, request, code)

    assert replay.status == 400
    assert error_of(replay) == "invalid_grant"
    assert _userinfo_status(idp.issuer, tokens["access_token"]) == 401
    assert _refresh(idp.issuer, tokens["refresh_token"])["error"] == "invalid_grant"


def test_code_is_bound_to_its_redirect_uri(idp: IdpProcess) -> None:
    request = AuthRequest()
    code = log_in(idp.issuer, request)

    reply = redeem(idp.issuer, request, code, redirect_uri="http://127.0.0.1:49153/callback")

    assert reply.status == 400
    assert error_of(reply) == "invalid_grant"


def test_code_is_bound_to_its_client(idp: IdpProcess) -> None:
    request = AuthRequest()
    code = log_in(idp.issuer, request)
    other = AuthRequest(client_id=OTHER_PUBLIC_CLIENT, code_verifier=request.code_verifier)

    reply = redeem(idp.issuer, other, code)

    assert reply.status == 400
    assert error_of(reply) == "invalid_grant"


def test_nonce_cannot_be_replayed(idp: IdpProcess) -> None:
    first = AuthRequest()
    log_in(idp.issuer, first)
    second = AuthRequest(nonce=first.nonce)

    reply = http_request(second.url(idp.issuer))

    assert redirect_params(reply)["error"] == "invalid_request"


def test_rotated_out_refresh_token_is_refused_and_revokes_the_login(idp: IdpProcess) -> None:
    request = AuthRequest()
    first = token_json(redeem(idp.issuer, request, log_in(idp.issuer, request)))
    second = _refresh(idp.issuer, first["refresh_token"])
    assert "id_token" in second

    replay = _refresh(idp.issuer, first["refresh_token"])

    assert replay["error"] == "invalid_grant"
    assert _refresh(idp.issuer, second["refresh_token"])["error"] == "invalid_grant"


def test_refresh_token_is_bound_to_its_client(idp: IdpProcess) -> None:
    request = AuthRequest()
    tokens = token_json(redeem(idp.issuer, request, log_in(idp.issuer, request)))

    stolen = _refresh(idp.issuer, tokens["refresh_token"], client_id=OTHER_PUBLIC_CLIENT)

    assert stolen["error"] == "invalid_grant"
    assert "id_token" in _refresh(idp.issuer, tokens["refresh_token"])


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic YWxpY2U6c2VjcmV0"])
def test_userinfo_needs_a_valid_bearer_token(idp: IdpProcess, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    reply = http_request(f"{idp.issuer}/userinfo", headers=headers)

    assert reply.status in (400, 401)
    assert "sub" not in json.loads(reply.body)


def test_token_endpoint_refuses_get_and_unknown_grants(idp: IdpProcess) -> None:
    get = http_request(f"{idp.issuer}/token")
    password_grant = http_request(
        f"{idp.issuer}/token",
        form={"grant_type": "password", "username": ALICE, "password": ALICE_PASSWORD},
    )

    assert get.status == 405
    assert password_grant.status == 400
    assert error_of(password_grant) == "unsupported_grant_type"


def test_logs_carry_no_secrets(idp: IdpProcess) -> None:
    request = AuthRequest()
    code = log_in(idp.issuer, request)
    tokens = token_json(redeem(idp.issuer, request, code))
    submit_login_form(AuthRequest().url(idp.issuer), ALICE, "a wrong password")

    log = idp.log()

    assert "POST /token 200" in log
    for secret in (
        ALICE_PASSWORD,
        CLIENT_SECRET,
        CONFIDENTIAL_CLIENT,
        "a wrong password",
        code,
        request.code_verifier,
        request.nonce,
        tokens["access_token"],
        tokens["refresh_token"],
        tokens["id_token"],
    ):
        assert secret not in log
