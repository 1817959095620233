"""Who zli calls as and where: `$MRZAP_API_KEY` or the saved login, and never a session token
sent to a server other than the one that issued it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrzap.errors import InvalidArgument, Unauthenticated
from zli._client import ApiKeyClient, ServiceClient, anonymous, connect
from zli._state import LoginState, StateDir

KEY = "mzk_0123456789abcdef_" + "k" * 43


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    for name in ("MRZAP_API_KEY", "MRZAP_SERVER", "MRZAP_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    return StateDir(tmp_path / "zli")


@pytest.fixture
def logged_in(state_dir: StateDir, tmp_path: Path) -> StateDir:
    ca = tmp_path / "ca.crt"
    ca.write_text("not parsed until a call is made")
    state_dir.save(LoginState("login.example:8443", str(ca), session_token="session"))
    return state_dir


def test_without_an_api_key_the_login_is_used(logged_in: StateDir) -> None:
    client = connect(logged_in)
    assert isinstance(client, ServiceClient)
    assert client.server == "login.example:8443"


def test_a_session_is_never_sent_to_another_server(logged_in: StateDir) -> None:
    assert connect(logged_in, "login.example:8443").server == "login.example:8443"
    with pytest.raises(InvalidArgument, match=r"logged in to login\.example:8443, not evil:443"):
        connect(logged_in, "evil:443")


def test_not_logged_in_and_no_api_key(state_dir: StateDir) -> None:
    with pytest.raises(Unauthenticated, match="zli login"):
        connect(state_dir)


def test_an_api_key_takes_the_server_from_the_environment(
    state_dir: StateDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ci-ca.crt"
    ca.write_text("pem")
    monkeypatch.setenv("MRZAP_API_KEY", f" {KEY}\n")
    monkeypatch.setenv("MRZAP_SERVER", "ci.example:8443")
    monkeypatch.setenv("MRZAP_CA_FILE", str(ca))
    client = connect(state_dir)
    assert isinstance(client, ApiKeyClient)
    assert (client.api_key, client.server, client.ca_file) == (KEY, "ci.example:8443", str(ca))
    assert KEY not in repr(client)
    assert connect(state_dir, "other.example:8443").server == "other.example:8443"


def test_an_api_key_beside_a_login_uses_its_server_and_ca(
    logged_in: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRZAP_API_KEY", KEY)
    client = connect(logged_in)
    assert isinstance(client, ApiKeyClient)
    assert (client.server, client.ca_file) == ("login.example:8443", logged_in.load().ca_file)


def test_an_api_key_needs_a_server(state_dir: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRZAP_API_KEY", KEY)
    with pytest.raises(InvalidArgument, match=r"set \$MRZAP_SERVER or --server"):
        connect(state_dir)


def test_something_else_in_the_api_key_variable_is_refused(
    state_dir: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRZAP_API_KEY", "session-token-pasted-by-mistake")
    monkeypatch.setenv("MRZAP_SERVER", "ci.example:8443")
    with pytest.raises(InvalidArgument, match="start with mzk_"):
        connect(state_dir)


def test_anonymous_calls_carry_no_credentials(
    state_dir: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRZAP_SERVER", "ci.example:8443")
    client = anonymous(state_dir)
    assert isinstance(client, ApiKeyClient)
    assert (client.api_key, client.server) == ("", "ci.example:8443")


def test_an_unreadable_ca_file_is_reported(
    state_dir: StateDir, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MRZAP_API_KEY", KEY)
    with pytest.raises(InvalidArgument, match="cannot read the CA file"):
        connect(state_dir, "ci.example:8443", str(tmp_path / "missing.crt"))
