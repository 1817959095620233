"""`zli login` end to end: real IdP, service and zli processes; the test plays the browser."""

from __future__ import annotations

import stat
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pyotp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.auth.v1 import auth_service_pb2 as pb
from bastion.auth.v1 import auth_service_pb2_grpc as pb_grpc
from bastion.mrzap.v1 import mrzap_pb2
from idp.testing import http_request, submit_login_form
from mrzap import keys
from mrzap.login_proof import sign_login_proof
from mrzap.pktoken import ClientInstanceClaims
from mrzap.process import ChildProcess
from zli._oidc import OidcClient, Pkce

from .conftest import PASSWORD, Cluster, start_cluster

AUTHORIZE_URL = r"(http://127\.0\.0\.1:\d+/authorize\?\S+)"
SECRET = r"enter the secret ([A-Z2-7]+) by hand"


def start_login(cluster: Cluster, home: Path, *args: str) -> tuple[ChildProcess, str]:
    """Run `zli login --no-browser` and return it with the URL it asks the user to open."""
    zli = cluster.zli(home, "login", "--no-browser", "--timeout", "20", *args, stdin=True)
    return zli, zli.wait_for(AUTHORIZE_URL).group(1)


def log_in(authorize_url: str, user: str, password: str = PASSWORD) -> str:
    """Submit the IdP's login form; returns where the IdP redirects the browser."""
    reply = submit_login_form(authorize_url, user, password)
    assert reply.status in (302, 303), reply.text
    return reply.headers["Location"]


def browser_login(
    cluster: Cluster, home: Path, user: str, password: str = PASSWORD
) -> ChildProcess:
    """`zli login` with the browser part done: the IdP has redirected back to zli."""
    zli, url = start_login(cluster, home)
    assert "Logged in" in http_request(log_in(url, user, password)).text
    return zli


def enrol(cluster: Cluster, home: Path, user: str) -> str:
    """A first login with MFA enrolment; returns the TOTP secret."""
    return enrol_with_code(cluster, home, user)[0]


def enrol_with_code(cluster: Cluster, home: Path, user: str) -> tuple[str, str]:
    """A first login with MFA enrolment; returns the TOTP secret and the code it used."""
    zli = browser_login(cluster, home, user)
    secret = zli.wait_for(SECRET).group(1)
    code = pyotp.TOTP(secret).now()
    zli.write(code + "\n")
    assert zli.wait() == 0, zli.output
    return secret, code


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "zli-config"


def test_first_login_enrols_mfa_and_whoami_shows_the_user(cluster: Cluster, home: Path) -> None:
    zli = browser_login(cluster, home, "bob")
    secret = zli.wait_for(SECRET).group(1)
    assert "otpauth://totp/mrzap:bob%40example.com" in zli.output
    assert "█" in zli.output or "▀" in zli.output  # the QR code, drawn in the terminal
    zli.write(pyotp.TOTP(secret).now() + "\n")
    assert zli.wait() == 0, zli.output
    assert "Logged in as bob@example.com" in zli.output

    for name in ("session.key", "session.json"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600
    whoami = cluster.zli(home, "whoami")
    assert whoami.wait() == 0, whoami.output
    assert "bob@example.com" in whoami.output
    assert "role:     user" in whoami.output


def test_next_login_asks_for_a_code_and_refuses_a_reused_one(cluster: Cluster, home: Path) -> None:
    secret, used = enrol_with_code(cluster, home, "carol")
    zli = browser_login(cluster, home, "carol")
    # Not TOTP.now() again: past a 30 s step since the enrolment, that is another code.
    zli.write(used + "\n")
    zli.wait_for("wrong or was used already; try again")
    zli.write(pyotp.TOTP(secret).at(time.time() + 30) + "\n")  # the next one is still in the window
    assert zli.wait() == 0, zli.output
    assert "Set up multi-factor" not in zli.output


def test_wrong_codes_then_lock_out(cluster: Cluster, home: Path) -> None:
    enrol(cluster, home, "dave")
    zli = browser_login(cluster, home, "dave")
    zli.write("000000\n000001\n000002\n")
    assert zli.wait() == 3
    assert "zli: the code is wrong or was used already" in zli.output
    zli = browser_login(cluster, home, "dave")
    zli.write("000003\n000004\n")
    assert zli.wait() == 7
    assert "too many wrong codes: MFA is locked for 30 s" in zli.output


def test_admin_resets_mfa(cluster: Cluster, tmp_path: Path) -> None:
    enrol(cluster, tmp_path / "erin", "erin")
    user_reset = cluster.zli(tmp_path / "erin", "mfa", "reset", "alice@example.com")
    assert user_reset.wait() == 4
    assert "only administrators" in user_reset.output
    enrol(cluster, tmp_path / "alice", "alice")
    admin_reset = cluster.zli(tmp_path / "alice", "mfa", "reset", "erin@example.com")
    assert admin_reset.wait() == 0, admin_reset.output
    ended = cluster.zli(tmp_path / "erin", "whoami")
    assert ended.wait() == 3
    zli = browser_login(cluster, tmp_path / "erin", "erin")
    zli.wait_for(SECRET)  # enrolment again
    zli.stop()


def test_logout_ends_the_session(cluster: Cluster, home: Path) -> None:
    enrol(cluster, home, "frank")
    assert cluster.zli(home, "logout").wait() == 0
    assert not (home / "session.key").exists()
    whoami = cluster.zli(home, "whoami")
    assert whoami.wait() == 3
    assert "not logged in: run `zli login`" in whoami.output


def test_wrong_password_issues_no_code(cluster: Cluster, home: Path) -> None:
    zli, url = start_login(cluster, home, "--timeout", "2")
    refused = submit_login_form(url, "grace", "wrong password")
    assert refused.status == 200  # the form again, with an error
    assert "Location" not in refused.headers
    assert "Wrong username or password." in refused.text
    assert "code=" not in refused.text
    assert zli.wait() == 3
    assert "no answer from the browser" in zli.output


def test_state_mismatch_is_refused(cluster: Cluster, home: Path) -> None:
    zli, url = start_login(cluster, home)
    callback = log_in(url, "grace")
    parts = urllib.parse.urlsplit(callback)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["state"] = "forged-" + query["state"]
    forged = parts._replace(query=urllib.parse.urlencode(query)).geturl()
    http_request(forged)
    assert zli.wait() == 3
    assert "state mismatch" in zli.output
    assert not (home / "session.key").exists()


def test_unreachable_service_is_reported(tmp_path: Path, cluster: Cluster) -> None:
    zli = cluster.zli(tmp_path, "login", "--no-browser", "--server", "127.0.0.1:9")
    assert zli.wait() == 6
    assert "zli:" in zli.output
    assert "Traceback" not in zli.output


# --- tokens the service must refuse, obtained from the real IdP -----------------------------


class Client:
    """Plays an OIDC client against the development IdP, without zli."""

    def __init__(self, cluster: Cluster, client_id: str = "zli") -> None:
        self.oidc = OidcClient(cluster.issuer, client_id, ("openid", "email"))
        self.metadata = self.oidc.discover()

    def code(self, nonce: str, pkce: Pkce, user: str = "grace") -> tuple[str, str]:
        redirect = "http://127.0.0.1:1/callback"  # never contacted: the test reads the redirect
        url = self.oidc.authorization_url(self.metadata, redirect, "state", nonce, pkce)
        location = log_in(url, user)
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["code"], redirect

    def id_token(self, nonce: str) -> str:
        pkce = Pkce.generate()
        code, redirect = self.code(nonce, pkce)
        return self.oidc.exchange_code(self.metadata, code, redirect, pkce).id_token


@pytest.fixture
def auth_stub(cluster: Cluster) -> Iterator[pb_grpc.AuthServiceStub]:
    credentials = grpc.ssl_channel_credentials(cluster.ca_file.read_bytes())
    with grpc.secure_channel(cluster.server, credentials) as channel:
        yield pb_grpc.AuthServiceStub(channel)


def login_with(
    stub: pb_grpc.AuthServiceStub,
    id_token: str,
    claims: ClientInstanceClaims,
    key: Ed25519PrivateKey,
) -> tuple[grpc.StatusCode, str]:
    """Log in with a PK token the service must refuse; returns the status code and details."""
    token = mrzap_pb2.PkToken(id_token=id_token, upk=claims.upk, rz=claims.rz)
    timestamp_ms = round(time.time() * 1000)
    proof = sign_login_proof(key, "login", token, timestamp_ms)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Login(pb.LoginRequest(pk_token=token, timestamp_ms=timestamp_ms, proof=proof))
    error = cast(grpc.Call, refused.value)  # a sync RPC raises an error that is also the Call
    return error.code(), error.details() or ""


def test_token_for_another_audience_is_refused(
    cluster: Cluster, auth_stub: pb_grpc.AuthServiceStub
) -> None:
    key = keys.generate_signing_key()
    claims = ClientInstanceClaims.generate(keys.public_key_bytes(key))
    id_token = Client(cluster, "other-app").id_token(claims.nonce())
    code, details = login_with(auth_stub, id_token, claims, key)
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "TOKEN_WRONG_AUDIENCE" in details


def test_token_from_another_issuer_is_refused(
    cluster: Cluster, auth_stub: pb_grpc.AuthServiceStub, tmp_path: Path
) -> None:
    other, processes = start_cluster(tmp_path / "other-org")
    try:
        key = keys.generate_signing_key()
        claims = ClientInstanceClaims.generate(keys.public_key_bytes(key))
        id_token = Client(other).id_token(claims.nonce())
    finally:
        for process in processes:
            process.stop()
    code, details = login_with(auth_stub, id_token, claims, key)
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "TOKEN_" in details


def test_token_whose_nonce_commits_to_another_key_is_refused(
    cluster: Cluster, auth_stub: pb_grpc.AuthServiceStub
) -> None:
    victim = ClientInstanceClaims.generate(keys.public_key_bytes(keys.generate_signing_key()))
    id_token = Client(cluster).id_token(victim.nonce())
    attacker = keys.generate_signing_key()
    claims = ClientInstanceClaims(keys.public_key_bytes(attacker), victim.rz)
    _, details = login_with(auth_stub, id_token, claims, attacker)
    assert "TOKEN_NONCE_MISMATCH" in details


def test_wrong_pkce_verifier_gets_no_tokens(cluster: Cluster) -> None:
    client = Client(cluster)
    pkce = Pkce.generate()
    code, redirect = client.code("a-nonce", pkce)
    with pytest.raises(Exception, match="invalid_grant"):
        client.oidc.exchange_code(client.metadata, code, redirect, Pkce.generate())


# --- session lifetime ---------------------------------------------------------------------------


def test_session_is_refreshed_silently_until_the_maximum_age(tmp_path: Path) -> None:
    short, processes = start_cluster(tmp_path / "short", token_lifetime_s=2, max_session_age="8s")
    try:
        home = tmp_path / "zli"
        enrol(short, home, "grace")
        time.sleep(2.5)  # the first ID token has expired
        whoami = short.zli(home, "whoami")
        assert whoami.wait() == 0, whoami.output
        assert "grace@example.com" in whoami.output
        time.sleep(6)  # past the organisation's maximum session age
        expired = short.zli(home, "whoami")
        assert expired.wait() == 3
        assert "maximum age: run `zli login`" in expired.output
    finally:
        for process in processes:
            process.stop()


def test_idp_down_is_reported(tmp_path: Path) -> None:
    other, processes = start_cluster(tmp_path / "idp-down")
    try:
        processes[0].stop()  # the IdP
        zli = other.zli(tmp_path / "zli", "login", "--no-browser")
        assert zli.wait() == 6
        assert "cannot reach the identity provider" in zli.output
    finally:
        for process in processes:
            process.stop()


def test_browser_error_page_is_not_fatal_to_the_idp(cluster: Cluster) -> None:
    assert http_request(cluster.issuer + "/authorize?client_id=nobody").status == 400
    assert http_request(cluster.issuer + "/.well-known/openid-configuration").status == 200
