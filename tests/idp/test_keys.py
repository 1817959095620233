"""The signing key file: created 0600, refused when others can read it, rotated with the
previous public key still published. Process tests run `python -m idp` for real."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import pytest

from idp import KEY_FILE_NAME, KeyFileError, SigningKeys
from idp.testing import IdpProcess, http_request

from .client import AuthRequest, log_in, redeem, token_json

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _kids(issuer: str) -> list[str]:
    return [key["kid"] for key in json.loads(http_request(f"{issuer}/jwks").body)["keys"]]


def _id_token(issuer: str) -> str:
    request = AuthRequest()
    return str(token_json(redeem(issuer, request, log_in(issuer, request)))["id_token"])


def _verifies(issuer: str, id_token: str) -> bool:
    key = jwt.PyJWKClient(f"{issuer}/jwks", cache_keys=False).get_signing_key_from_jwt(id_token)
    jwt.decode(id_token, key.key, algorithms=["RS256"], audience="zli", issuer=issuer)
    return True


def test_first_start_writes_a_private_key_file(config_path: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    with IdpProcess(config_path, data_dir, tmp_path / "idp.log") as idp:
        kids = _kids(idp.issuer)

    key_file = data_dir / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert kids == [json.loads(key_file.read_text())["current"]["kid"]]


def test_key_survives_a_restart(config_path: Path, tmp_path: Path) -> None:
    with IdpProcess(config_path, tmp_path / "data", tmp_path / "idp.log") as idp:
        before = _kids(idp.issuer)
    with IdpProcess(config_path, tmp_path / "data", tmp_path / "idp.log") as idp:
        after = _kids(idp.issuer)

    assert after == before


def test_rotation_keeps_the_previous_key_published(config_path: Path, tmp_path: Path) -> None:
    with IdpProcess(config_path, tmp_path / "data", tmp_path / "idp.log") as idp:
        (old_kid,) = _kids(idp.issuer)
        old_token = _id_token(idp.issuer)

    # Same port again, so the same issuer: as a real deployment restarts.
    port = urlsplit(idp.issuer).port
    assert port is not None
    with IdpProcess(
        config_path, tmp_path / "data", tmp_path / "idp.log", "--rotate-key", "--port", str(port)
    ) as idp:
        kids = _kids(idp.issuer)
        new_token = _id_token(idp.issuer)
        assert _verifies(idp.issuer, old_token)
        assert _verifies(idp.issuer, new_token)

    assert len(kids) == 2
    new_kid = kids[0]
    assert kids[1] == old_kid
    assert new_kid != old_kid
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert jwt.get_unverified_header(old_token)["kid"] == old_kid
    stored = json.loads((tmp_path / "data" / KEY_FILE_NAME).read_text())
    assert "d" not in stored["previous"][0], "the retired private key must not be kept"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_process_refuses_a_key_file_others_can_read(
    config_path: Path, tmp_path: Path, mode: int
) -> None:
    data_dir = tmp_path / "data"
    SigningKeys.load_or_create(data_dir)
    (data_dir / KEY_FILE_NAME).chmod(mode)

    result = subprocess.run(
        [sys.executable, "-m", "idp", "--config", str(config_path), "--data-dir", str(data_dir)],
        cwd=_REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 1
    assert result.stdout == ""  # never got as far as listening
    assert f"mode {mode:04o}" in result.stderr
    assert "chmod 600" in result.stderr


def test_load_refuses_a_symlinked_key_file(tmp_path: Path) -> None:
    real = tmp_path / "real"
    SigningKeys.load_or_create(real)
    linked = tmp_path / "linked"
    linked.mkdir(mode=0o700)
    (linked / KEY_FILE_NAME).symlink_to(real / KEY_FILE_NAME)

    with pytest.raises(KeyFileError, match="cannot open"):
        SigningKeys.load_or_create(linked)


def test_load_refuses_a_corrupt_key_file(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    fd = os.open(tmp_path / KEY_FILE_NAME, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write('{"current": {"kty": "RSA"}}')

    with pytest.raises(KeyFileError, match="not a valid signing key file"):
        SigningKeys.load_or_create(tmp_path)


def test_rotation_keeps_only_the_latest_previous_key(tmp_path: Path) -> None:
    first = SigningKeys.load_or_create(tmp_path)
    second = SigningKeys.load_or_create(tmp_path, rotate=True)
    third = SigningKeys.load_or_create(tmp_path, rotate=True)

    assert [k.kid for k in second.previous] == [first.kid]
    assert [k.kid for k in third.previous] == [second.kid]
    assert [k["kid"] for k in third.public_jwks()["keys"]] == [third.kid, second.kid]
    assert SigningKeys.load_or_create(tmp_path).kid == third.kid
    assert stat.S_IMODE((tmp_path / KEY_FILE_NAME).stat().st_mode) == 0o600
