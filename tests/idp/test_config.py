"""The IdP's TOML configuration and password hashing (in-process: pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from idp import DevIdpConfig, DevIdpConfigError, hash_password, verify_password


@pytest.fixture(scope="module")
def a_hash() -> str:
    return hash_password("pw")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "idp.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _minimal(a_hash: str, *, client: str = "", user: str = "", top: str = "") -> str:
    return f"""{top}
[[clients]]
client_id = "zli"
redirect_uris = ["http://127.0.0.1/callback"]
{client}

[[users]]
username = "alice"
password_hash = "{a_hash}"
email = "alice@example.com"
{user}
"""


def test_full_config_is_read(tmp_path: Path, a_hash: str) -> None:
    path = _write(
        tmp_path,
        f"""
[server]
host = "127.0.0.1"
port = 8999
data_dir = "state"

[tokens]
id_token_lifetime_seconds = 300
refresh_token_lifetime_seconds = 3600

[[clients]]
client_id = "zli"
redirect_uris = ["http://127.0.0.1/callback", "http://[::1]/callback"]

[[clients]]
client_id = "web"
redirect_uris = ["https://mrzap.example/cb"]
client_secret_hash = "{a_hash}"

[[users]]
username = "alice"
password_hash = "{a_hash}"
sub = "00u1"
email = "alice@example.com"
email_verified = true
name = "Alice"
groups = ["admins"]
""",
    )

    config = DevIdpConfig.from_toml(path)

    assert (config.host, config.port) == ("127.0.0.1", 8999)
    assert config.data_dir == tmp_path.resolve() / "state"
    assert config.id_token_lifetime_seconds == 300
    assert config.refresh_token_lifetime_seconds == 3600
    assert config.code_lifetime_seconds == 60
    zli, web = config.clients
    assert zli.is_public
    assert not web.is_public
    assert config.client("web") == web
    alice = config.user("alice")
    assert alice is not None
    assert (alice.sub, alice.name, alice.groups, alice.email_verified) == (
        "00u1",
        "Alice",
        ("admins",),
        True,
    )


def test_defaults(tmp_path: Path, a_hash: str) -> None:
    config = DevIdpConfig.from_toml(_write(tmp_path, _minimal(a_hash)))

    assert (config.host, config.port, config.data_dir) == ("127.0.0.1", 0, None)
    assert config.id_token_lifetime_seconds == 600
    assert config.refresh_token_lifetime_seconds == 12 * 3600
    alice = config.user("alice")
    assert alice is not None
    assert (alice.sub, alice.name, alice.groups, alice.email_verified) == (
        "alice",
        "alice",
        (),
        False,
    )
    assert config.user("bob") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"top": "typo = 1"}, "top level: unknown key(s): typo"),
        ({"top": '[server]\nhost = "0.0.0.0"'}, "server.host: must be a loopback address"),
        ({"top": "[server]\nport = 70000"}, "server.port: must be between 0 and 65535"),
        ({"top": '[server]\nport = "80"'}, "server.port: must be an integer"),
        ({"top": "[tokens]\nid_token_lifetime_seconds = 0"}, "tokens.id_token_lifetime_seconds"),
        ({"top": "[tokens]\ncode_lifetime_seconds = true"}, "must be an integer"),
        ({"user": 'password_hash2 = "x"'}, "users[0]: unknown key(s): password_hash2"),
        ({"user": "email_verified = 1"}, "users[0].email_verified: must be true or false"),
        ({"user": 'groups = ["ok", 3]'}, "users[0].groups: must be a list of non-empty strings"),
        ({"client": 'client_secret_hash = "plain-secret"'}, "clients[0].client_secret_hash"),
    ],
)
def test_invalid_config_names_the_problem(
    tmp_path: Path, a_hash: str, change: dict[str, str], message: str
) -> None:
    path = _write(tmp_path, _minimal(a_hash, **change))

    with pytest.raises(DevIdpConfigError) as raised:
        DevIdpConfig.from_toml(path)

    assert message in raised.value.message
    assert str(path) in raised.value.message


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://mrzap.example/cb", "plain http is only allowed for loopback hosts"),
        ("ftp://127.0.0.1/cb", "must be an absolute http(s) URI"),
        ("/callback", "must be an absolute http(s) URI"),
        ("http://127.0.0.1/cb#frag", "must not have a fragment"),
        ("http://u:p@127.0.0.1/cb", "must not carry credentials"),
        ("http://127.0.0.1:99999/cb", "is not a valid URI"),
    ],
)
def test_invalid_redirect_uri_is_refused(
    tmp_path: Path, a_hash: str, uri: str, message: str
) -> None:
    text = _minimal(a_hash).replace("http://127.0.0.1/callback", uri)

    with pytest.raises(DevIdpConfigError) as raised:
        DevIdpConfig.from_toml(_write(tmp_path, text))

    assert message in raised.value.message


def test_plain_password_instead_of_hash_is_refused(tmp_path: Path, a_hash: str) -> None:
    text = _minimal(a_hash).replace(a_hash, "hunter2")

    with pytest.raises(DevIdpConfigError, match=r"users\[0\]\.password_hash: not a scrypt"):
        DevIdpConfig.from_toml(_write(tmp_path, text))


def test_duplicates_are_refused(tmp_path: Path, a_hash: str) -> None:
    text = _minimal(a_hash)
    users = text[text.index("[[users]]") :]

    with pytest.raises(DevIdpConfigError, match="username 'alice' appears more than once"):
        DevIdpConfig.from_toml(_write(tmp_path, text + users))


def test_missing_users_and_bad_toml_are_refused(tmp_path: Path) -> None:
    no_users = '[[clients]]\nclient_id = "zli"\nredirect_uris = ["http://127.0.0.1/cb"]\n'

    with pytest.raises(DevIdpConfigError, match="add at least one user"):
        DevIdpConfig.from_toml(_write(tmp_path, no_users))
    with pytest.raises(DevIdpConfigError, match="not valid TOML"):
        DevIdpConfig.from_toml(_write(tmp_path, "[[clients]"))
    with pytest.raises(DevIdpConfigError, match="cannot read"):
        DevIdpConfig.from_toml(tmp_path / "missing.toml")


def test_password_hash_round_trip() -> None:
    first = hash_password("correct horse")
    second = hash_password("correct horse")

    assert first != second  # salted
    assert verify_password("correct horse", first)
    assert verify_password("correct horse", second)
    assert not verify_password("correct hors", first)
    assert not verify_password("", first)
    with pytest.raises(ValueError, match="empty"):
        hash_password("")


@pytest.mark.parametrize(
    "encoded",
    [
        "hunter2",
        "scrypt$ln=30,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
        "bcrypt$ln=14,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
    ],
    ids=["plain", "too-costly", "other-scheme"],
)
def test_malformed_hash_is_refused(encoded: str) -> None:
    with pytest.raises(ValueError, match="scrypt"):
        verify_password("x", encoded)
