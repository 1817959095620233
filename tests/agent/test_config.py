"""The agent's configuration directory: round trip, 0600 files, clear errors."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent import AgentConfig, AgentFiles, GrantKeyPin
from mrzap import keys
from mrzap.config import IdpConfig
from mrzap.errors import FailedPrecondition, InvalidArgument, PermissionDenied

CONFIG = AgentConfig(
    server="mrzap.example.com:8443",
    target_id="3f1f5b3c-8d0e-4f7e-9b4a-2f2d1c0b9a88",
    org_id="org-1",
    name='web "1"',
    grant_keys=(GrantKeyPin("gk-1", b"\x01" * 32), GrantKeyPin("gk-2", b"\x02" * 32)),
    idp=IdpConfig(
        issuer="https://idp.example.com",
        client_id="zli",
        allowed_email_domains=frozenset({"example.com"}),
        tenant_id="tenant",
        max_session_age_s=3600.0,
    ),
    ca_pem=b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
)


def test_round_trip_with_every_file_0600_in_a_0700_directory(tmp_path: Path) -> None:
    files = AgentFiles(tmp_path / "agent")
    key = keys.generate_signing_key()
    files.save(CONFIG, key)
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    for path in (files.config, files.key, files.ca):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    loaded, loaded_key = files.load()
    assert loaded == CONFIG
    assert keys.public_key_bytes(loaded_key) == keys.public_key_bytes(key)
    assert b"PRIVATE" not in files.config.read_bytes()


def test_system_roots_need_no_ca_file(tmp_path: Path) -> None:
    files = AgentFiles(tmp_path)
    files.save(AgentConfig(**{**CONFIG.__dict__, "ca_pem": None}), keys.generate_signing_key())
    assert not files.ca.exists()
    assert files.load()[0].ca_pem is None


def test_missing_registration_says_how_to_register(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="run `mrzap-agent register`"):
        AgentFiles(tmp_path).load()


def test_damaged_configuration_is_refused(tmp_path: Path) -> None:
    files = AgentFiles(tmp_path)
    files.save(CONFIG, keys.generate_signing_key())
    files.config.write_text('server = "x:1"\n')
    with pytest.raises(InvalidArgument, match="incomplete or damaged"):
        files.load()
    files.config.write_text("server = [")
    with pytest.raises(InvalidArgument, match=r"agent\.toml"):
        files.load()


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    files = AgentFiles(tmp_path)
    files.save(CONFIG, keys.generate_signing_key())
    files.key.chmod(0o644)
    with pytest.raises(PermissionDenied, match="chmod 600"):
        files.load()


def test_one_agent_at_a_time_holds_the_directory(tmp_path: Path) -> None:
    files = AgentFiles(tmp_path)
    with files.held():
        assert stat.S_IMODE((tmp_path / "agent.lock").stat().st_mode) == 0o600
        refused = pytest.raises(FailedPrecondition, match="another mrzap-agent is running with")
        with refused, files.held():
            pass
    with files.held():  # given up with the first
        pass


def test_a_killed_agent_does_not_keep_the_next_one_out(tmp_path: Path) -> None:
    holding = (
        "import sys, time; from pathlib import Path; from agent import AgentFiles\n"
        "with AgentFiles(Path(sys.argv[1])).held():\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", holding, str(tmp_path)], stdout=subprocess.PIPE
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"held\n"
            with pytest.raises(FailedPrecondition), AgentFiles(tmp_path).held():
                pass
        finally:
            holder.kill()
    with AgentFiles(tmp_path).held():
        pass
