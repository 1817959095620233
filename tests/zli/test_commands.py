"""zli's administration commands against a fake service (zli.testing.FakeClient): what each
command sends, how it shows the answer, and how it fails. The real service is in tests/e2e.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.errors import AlreadyExists, PermissionDenied
from mrzap.timestamps import to_timestamp
from mrzap.tls import ca_fingerprint, ensure_server_tls
from zli.cli import main
from zli.testing import FakeClient

T0 = 1_900_000_000.0
PROD = registry_pb.Environment(id="env-prod", name="prod")
STAGING = registry_pb.Environment(id="env-staging", name="staging")
WEB = registry_pb.Target(
    id="5f0c8a52-52d6-4a4e-9d0b-7c1f4b1e2a10",
    name="web-1",
    environment_id="env-prod",
    state=registry_pb.TARGET_STATE_ONLINE,
    hostname="web-1.internal",
    create_time=to_timestamp(T0),
    last_seen_time=to_timestamp(T0 + 60),
)


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()
    fake.handlers["ListEnvironments"] = lambda _: registry_pb.ListEnvironmentsResponse(
        environments=[PROD, STAGING]
    )

    def connect(*_: object) -> FakeClient:
        fake.credentials = "session or API key"
        return fake

    def anonymous(*_: object) -> FakeClient:
        fake.credentials = "none"
        return fake

    monkeypatch.setattr("zli._context.connect", connect)
    monkeypatch.setattr("zli._context.anonymous", anonymous)
    return fake


def zli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def by_name(*targets: registry_pb.Target) -> Any:  # noqa: ANN401 - a handler
    def answer(request: registry_pb.ListTargetsRequest) -> registry_pb.ListTargetsResponse:
        return registry_pb.ListTargetsResponse(
            targets=[t for t in targets if not request.name or t.name == request.name]
        )

    return answer


# --- targets -----------------------------------------------------------------------------------


def test_targets_list_filters_by_environment_name_and_state(service: FakeClient) -> None:
    service.handlers["ListTargets"] = by_name(WEB)
    result = zli("targets", "list", "--env", "prod", "--state", "online", "--state", "offline")
    assert result.exit_code == 0, result.output
    request = service.requests("ListTargets")[0]
    assert list(request.environment_ids) == ["env-prod"]
    assert list(request.states) == [
        registry_pb.TARGET_STATE_ONLINE,
        registry_pb.TARGET_STATE_OFFLINE,
    ]
    assert result.stdout.splitlines() == [
        "NAME   STATE   ENVIRONMENT  HOSTNAME        LAST SEEN (UTC)      ID",
        f"web-1  online  prod         web-1.internal  2030-03-17 17:47:40  {WEB.id}",
    ]


def test_targets_list_reads_every_page_only_when_asked(service: FakeClient) -> None:
    pages = {
        "": registry_pb.ListTargetsResponse(targets=[WEB], next_page_token="p2"),
        "p2": registry_pb.ListTargetsResponse(targets=[registry_pb.Target(id="t2", name="web-2")]),
    }
    service.handlers["ListTargets"] = lambda request: pages[request.page_token]
    first = zli("targets", "list")
    assert first.exit_code == 0
    assert "web-2" not in first.stdout
    assert "add --all-pages" in first.stderr
    every = zli("targets", "list", "--all-pages", "--json")
    assert [t["name"] for t in json.loads(every.stdout)] == ["web-1", "web-2"]


def test_targets_list_refuses_unknown_states_and_environments(service: FakeClient) -> None:
    bad_state = zli("targets", "list", "--state", "asleep")
    assert bad_state.exit_code == 2
    assert "'asleep' is not one of" in bad_state.stderr
    service.handlers["ListTargets"] = by_name(WEB)
    bad_env = zli("targets", "list", "--env", "nowhere")
    assert bad_env.exit_code == 5
    assert "zli: no environment 'nowhere'" in bad_env.stderr
    assert not service.requests("ListTargets")


def test_targets_show_finds_a_target_by_name_and_shows_its_history(service: FakeClient) -> None:
    service.handlers["ListTargets"] = by_name(WEB)
    service.handlers["GetTarget"] = lambda request: registry_pb.GetTargetResponse(
        target=WEB,
        state_changes=[
            registry_pb.TargetStateChange(
                state=registry_pb.TARGET_STATE_ACTIVATION, time=to_timestamp(T0), reason="token"
            ),
            registry_pb.TargetStateChange(
                state=registry_pb.TARGET_STATE_ONLINE, time=to_timestamp(T0 + 5), reason="connected"
            ),
        ],
    )
    result = zli("targets", "show", "web-1")
    assert result.exit_code == 0, result.output
    assert service.requests("GetTarget")[0].target_id == WEB.id
    assert "environment:   prod (env-prod)" in result.stdout
    assert "registered:    never" in result.stdout
    assert result.stdout.endswith(
        "TIME (UTC)           STATE       REASON\n"
        "2030-03-17 17:46:40  activation  token\n"
        "2030-03-17 17:46:45  online      connected\n"
    )


def test_targets_show_takes_an_id_and_reports_unknown_names(service: FakeClient) -> None:
    service.handlers["ListTargets"] = by_name()
    service.handlers["GetTarget"] = lambda _: registry_pb.GetTargetResponse(target=WEB)
    assert zli("targets", "show", WEB.id).exit_code == 0
    missing = zli("targets", "show", "web-9")
    assert missing.exit_code == 5
    assert "no target named 'web-9'" in missing.stderr


def test_targets_rename(service: FakeClient) -> None:
    service.handlers["ListTargets"] = by_name(WEB)
    service.handlers["GetTarget"] = lambda _: registry_pb.GetTargetResponse(target=WEB)
    service.handlers["RenameTarget"] = lambda request: registry_pb.RenameTargetResponse(
        target=registry_pb.Target(id=request.target_id, name=request.name)
    )
    result = zli("targets", "rename", "web-1", "web-one")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Renamed target 'web-1' to 'web-one' ({WEB.id}).\n"


def test_targets_delete_asks_first(service: FakeClient) -> None:
    service.handlers["ListTargets"] = by_name(WEB)
    service.handlers["GetTarget"] = lambda _: registry_pb.GetTargetResponse(target=WEB)
    service.handlers["DeleteTarget"] = lambda _: registry_pb.DeleteTargetResponse()
    kept = zli("targets", "delete", "web-1", stdin="n\n")
    assert kept.exit_code == 1
    assert "Its agent must register again" in kept.output
    assert not service.requests("DeleteTarget")
    deleted = zli("targets", "delete", "web-1", "--yes")
    assert deleted.exit_code == 0
    assert service.requests("DeleteTarget")[0].target_id == WEB.id


def test_refusals_are_one_line_with_their_exit_code(service: FakeClient) -> None:
    def refuse(_: object) -> None:
        raise PermissionDenied("only administrators may do this")

    service.handlers["ListTargets"] = by_name(WEB)
    service.handlers["GetTarget"] = lambda _: registry_pb.GetTargetResponse(target=WEB)
    service.handlers["DeleteTarget"] = refuse
    result = zli("targets", "delete", "web-1", "--yes")
    assert (result.exit_code, result.stderr) == (4, "zli: only administrators may do this\n")


# --- environments ------------------------------------------------------------------------------


def test_env_create_sends_the_cleanup_timeout(service: FakeClient) -> None:
    def create(request: registry_pb.CreateEnvironmentRequest) -> Any:  # noqa: ANN401
        return registry_pb.CreateEnvironmentResponse(
            environment=registry_pb.Environment(
                id="env-new",
                name=request.name,
                description=request.description,
                offline_cleanup_timeout=request.offline_cleanup_timeout,
            )
        )

    service.handlers["CreateEnvironment"] = create
    result = zli("env", "create", "qa", "--description", "for tests", "--offline-cleanup", "12h")
    assert result.exit_code == 0, result.output
    request = service.requests("CreateEnvironment")[0]
    assert request.offline_cleanup_timeout.seconds == 12 * 3600
    assert result.stdout == "Created environment 'qa' (env-new); offline cleanup after 12h.\n"
    default = zli("env", "create", "dev")
    assert not service.requests("CreateEnvironment")[1].HasField("offline_cleanup_timeout")
    assert default.exit_code == 0
    bad = zli("env", "create", "qa", "--offline-cleanup", "soon")
    assert bad.exit_code == 2
    assert "not a duration" in bad.stderr


def test_env_create_of_an_existing_name(service: FakeClient) -> None:
    def exists(_: object) -> None:
        raise AlreadyExists("an environment named 'prod' exists already")

    service.handlers["CreateEnvironment"] = exists
    result = zli("env", "create", "prod")
    assert (result.exit_code, result.stderr) == (
        10,
        "zli: an environment named 'prod' exists already\n",
    )


def test_env_list_and_delete_by_name(service: FakeClient) -> None:
    listed = zli("env", "list")
    assert listed.stdout.splitlines()[0].split() == [
        "NAME",
        "OFFLINE",
        "CLEANUP",
        "ID",
        "DESCRIPTION",
    ]
    service.handlers["DeleteEnvironment"] = lambda _: registry_pb.DeleteEnvironmentResponse()
    deleted = zli("env", "delete", "staging")
    assert deleted.exit_code == 0
    assert service.requests("DeleteEnvironment")[0].environment_id == "env-staging"


# --- keys --------------------------------------------------------------------------------------


def test_registration_key_create_shows_the_secret_once(service: FakeClient) -> None:
    service.handlers["CreateRegistrationKey"] = lambda request: (
        registry_pb.CreateRegistrationKeyResponse(
            registration_key=registry_pb.RegistrationKey(
                id="mzr_1", name=request.name, environment_id=request.environment_id
            ),
            secret="mzr_1_secret",
        )
    )
    result = zli("keys", "registration", "create", "web servers", "--env", "prod", "--ttl", "30d")
    assert result.exit_code == 0, result.output
    request = service.requests("CreateRegistrationKey")[0]
    assert (request.environment_id, request.ttl.seconds) == ("env-prod", 30 * 86400)
    assert "\n  mzr_1_secret\n" in result.stdout
    assert "shown only this once" in result.stdout
    as_json = json.loads(zli("keys", "registration", "create", "x", "--json").stdout)
    assert as_json["secret"] == "mzr_1_secret"


def test_api_key_create_with_role_and_lifetime(service: FakeClient) -> None:
    service.handlers["CreateApiKey"] = lambda request: auth_pb.CreateApiKeyResponse(
        api_key=auth_pb.ApiKey(id="mzk_0123456789abcdef", name=request.name, admin=request.admin),
        secret="mzk_0123456789abcdef_" + "s" * 43,
    )
    result = zli("keys", "api", "create", "ci", "--role", "admin", "--ttl", "90d")
    assert result.exit_code == 0, result.output
    request = service.requests("CreateApiKey")[0]
    assert (request.name, request.admin, request.ttl.seconds) == ("ci", True, 90 * 86400)
    assert "role admin; expires never" in result.stdout
    assert "MRZAP_API_KEY=<the secret> MRZAP_SERVER=mrzap.example.com:8443" in result.stdout
    user = zli("keys", "api", "create", "reader")
    assert user.exit_code == 0
    assert not service.requests("CreateApiKey")[1].admin
    assert not service.requests("CreateApiKey")[1].HasField("ttl")
    assert zli("keys", "api", "create", "x", "--role", "root").exit_code == 2


def test_keys_are_revoked_by_name_or_id(service: FakeClient) -> None:
    keys = [
        auth_pb.ApiKey(id="mzk_aaaaaaaaaaaaaaaa", name="ci"),
        auth_pb.ApiKey(id="mzk_bbbbbbbbbbbbbbbb", name="twin"),
        auth_pb.ApiKey(id="mzk_cccccccccccccccc", name="twin"),
    ]
    service.handlers["ListApiKeys"] = lambda _: auth_pb.ListApiKeysResponse(api_keys=keys)
    service.handlers["RevokeApiKey"] = lambda _: auth_pb.RevokeApiKeyResponse()
    assert zli("keys", "api", "revoke", "ci").exit_code == 0
    assert zli("keys", "api", "revoke", "mzk_cccccccccccccccc").exit_code == 0
    ambiguous = zli("keys", "api", "revoke", "twin")
    assert ambiguous.exit_code == 8
    assert "2 API keys are named 'twin'" in ambiguous.stderr
    revoked = [r.api_key_id for r in service.requests("RevokeApiKey")]
    assert revoked == ["mzk_aaaaaaaaaaaaaaaa", "mzk_cccccccccccccccc"]


def test_key_lists(service: FakeClient) -> None:
    service.handlers["ListApiKeys"] = lambda _: auth_pb.ListApiKeysResponse(
        api_keys=[
            auth_pb.ApiKey(
                id="mzk_aaaaaaaaaaaaaaaa", name="ci", admin=True, create_time=to_timestamp(T0)
            )
        ]
    )
    service.handlers["ListRegistrationKeys"] = lambda _: registry_pb.ListRegistrationKeysResponse()
    api = zli("keys", "api", "list")
    assert api.stdout.splitlines()[1].split() == [
        "ci", "admin", "2030-03-17", "17:46:40", "never", "never", "mzk_aaaaaaaaaaaaaaaa"
    ]  # fmt: skip
    assert zli("keys", "registration", "list").stdout == "No registration keys.\n"


# --- agent install-command ---------------------------------------------------------------------


def activation(request: registry_pb.CreateActivationTokenRequest) -> Any:  # noqa: ANN401
    return registry_pb.CreateActivationTokenResponse(
        activation_token="mza_token with 'quotes'",
        expire_time=to_timestamp(T0 + 600),
        target=registry_pb.Target(id="t-new", name=request.target_name),
    )


def test_install_command_pins_the_ca_and_quotes_the_token(
    service: FakeClient, tmp_path: Path
) -> None:
    tls = ensure_server_tls(tmp_path / "tls", ["127.0.0.1"])
    service.ca_path = str(tls.ca_cert)
    service.handlers["CreateActivationToken"] = activation
    result = zli("agent", "install-command", "--env", "prod", "--name", "web-2")
    assert result.exit_code == 0, result.output
    request = service.requests("CreateActivationToken")[0]
    assert (request.environment_id, request.target_name, request.registration_key) == (
        "env-prod",
        "web-2",
        "",
    )
    assert service.credentials == "session or API key"
    lines = result.stdout.splitlines()
    assert "works once, until 2030-03-17 17:56:40 UTC" in result.stdout
    register = shlex.split(next(line for line in lines if line.startswith("mrzap-agent")))
    assert register == [
        "mrzap-agent", "register", "--server", "mrzap.example.com:8443",
        "--activation-token", "mza_token with 'quotes'",
        "--ca-fingerprint", ca_fingerprint(tls.ca_cert.read_bytes()),
    ]  # fmt: skip
    assert "/opt/mrzap-agent/bin/pip install mrzap" in lines
    assert "systemctl enable --now mrzap-agent" in lines


def test_install_command_with_a_registration_key_needs_no_login(service: FakeClient) -> None:
    service.handlers["CreateActivationToken"] = activation
    result = zli(
        "agent", "install-command", "--registration-key", "mzr_secret", "--json",
        "--package", "./mrzap-0.1.0-py3-none-any.whl", "--agent-server", "mrzap.internal:443",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert service.credentials == "none"
    assert service.requests("CreateActivationToken")[0].registration_key == "mzr_secret"
    answer = json.loads(result.stdout)
    assert "pip install ./mrzap-0.1.0-py3-none-any.whl" in answer["commands"][1]
    register = next(c for c in answer["commands"] if c.startswith("mrzap-agent register"))
    assert "--server mrzap.internal:443" in register
    assert "--ca-fingerprint" not in register  # the system's roots: nothing to pin
    both = zli("agent", "install-command", "--registration-key", "k", "--env", "prod")
    assert both.exit_code == 8
    assert "the key's environment applies" in both.stderr
