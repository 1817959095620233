"""`python -m idp` as an operator uses it: hashing passwords, clean stops, clear errors."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from idp import verify_password
from idp.testing import IdpProcess, http_request

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idp", *args],
        cwd=_REPO_ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_hash_password_reads_stdin() -> None:
    result = _run("hash-password", stdin="s3cret with spaces \n")

    assert result.returncode == 0, result.stderr
    hashed = result.stdout.strip()
    assert hashed.startswith("scrypt$")
    assert "s3cret" not in hashed
    assert verify_password("s3cret with spaces ", hashed)
    assert not verify_password("s3cret with spaces", hashed)


def test_hash_password_refuses_an_empty_password() -> None:
    result = _run("hash-password", stdin="\n")

    assert result.returncode == 1
    assert "empty" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server_cleanly(
    config_path: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    idp = IdpProcess(config_path, tmp_path / "data", tmp_path / "idp.log")
    try:
        assert http_request(f"{idp.issuer}/jwks").status == 200
        idp.process.send_signal(signum)
        assert idp.process.wait(timeout=10) == 0
    finally:
        idp.stop()
    assert "stopped" in idp.log()
    assert "Traceback" not in idp.log()


def test_config_is_required_to_serve(tmp_path: Path) -> None:
    result = _run("--data-dir", str(tmp_path))

    assert result.returncode == 2
    assert "--config is required" in result.stderr


def test_invalid_config_is_explained(tmp_path: Path) -> None:
    config = tmp_path / "idp.toml"
    config.write_text('[server]\nhots = "127.0.0.1"\n', encoding="utf-8")

    result = _run("--config", str(config), "--data-dir", str(tmp_path / "data"))

    assert result.returncode == 1
    assert "server: unknown key(s): hots" in result.stderr
    assert result.stdout == ""


def test_non_loopback_host_is_refused(config_path: Path, tmp_path: Path) -> None:
    everywhere = "0.0.0.0"  # noqa: S104 -- the mistake this test makes sure is refused
    result = _run("--config", str(config_path), "--data-dir", str(tmp_path), "--host", everywhere)

    assert result.returncode == 1
    assert "loopback" in result.stderr
    assert result.stdout == ""
