"""`zli policy` and `zli access` against a fake service (zli.testing.FakeClient and FakePolicies):
what each command sends, what it prints, and that a bad file changes nothing. The real service
is in tests/e2e/test_policy.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from google.protobuf.duration_pb2 import Duration

from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.errors import InvalidArgument, PermissionDenied
from mrzap.timestamps import to_timestamp
from zli._errors import EXIT_DENIED, EXIT_TESTS_FAILED
from zli._policy_yaml import EXAMPLES
from zli.cli import main
from zli.testing import FakeClient, FakePolicies

WEB_ID = "5f0c8a52-52d6-4a4e-9d0b-7c1f4b1e2a10"
TARGETS = {"web-1": WEB_ID, "db-jump": "7d9e0c1a-0000-4000-8000-000000000002"}
SHELL_POLICY = """\
name: ops-shell
kind: target_connect
subjects:
  groups: [ops]
targets:
  names: [web-1]
  environments: [prod]
verbs: [shell]
"""


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()
    fake.handlers["ListEnvironments"] = lambda _: registry_pb.ListEnvironmentsResponse(
        environments=[
            registry_pb.Environment(id="env-prod", name="prod"),
            registry_pb.Environment(id="env-production", name="production"),
        ]
    )

    def list_targets(request: registry_pb.ListTargetsRequest) -> object:
        found = [(n, i) for n, i in TARGETS.items() if request.name in ("", n)]
        return registry_pb.ListTargetsResponse(
            targets=[registry_pb.Target(id=i, name=n) for n, i in found]
        )

    def get_target(request: registry_pb.GetTargetRequest) -> object:
        names = {i: n for n, i in TARGETS.items()}
        target = registry_pb.Target(id=request.target_id, name=names[request.target_id])
        return registry_pb.GetTargetResponse(target=target)

    fake.handlers["ListTargets"] = list_targets
    fake.handlers["GetTarget"] = get_target
    monkeypatch.setattr("zli._context.connect", lambda *_: fake)
    return fake


@pytest.fixture
def policies(service: FakeClient) -> FakePolicies:
    return FakePolicies().install(service)


def zli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def write(tmp_path: Path, text: str, name: str = "policies.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def changes(service: FakeClient) -> list[str]:
    return [name for name, _ in service.calls if name in ("CreatePolicy", "UpdatePolicy")]


# --- create, show, list, export ----------------------------------------------------------------


def test_create_resolves_names_and_show_writes_them_back(
    service: FakeClient, policies: FakePolicies, tmp_path: Path
) -> None:
    result = zli("policy", "create", write(tmp_path, SHELL_POLICY))
    assert result.exit_code == 0, result.output
    assert result.stdout == "Created policy 'ops-shell' (pol-1).\n"
    [created] = service.requests("CreatePolicy")
    assert list(created.policy.target_connect.targets.target_ids) == [WEB_ID]
    assert list(created.policy.target_connect.targets.environment_ids) == ["env-prod"]
    assert [r.policy.name for r in service.requests("CheckPolicy")] == ["ops-shell"]

    shown = zli("policy", "show", "ops-shell")
    assert shown.exit_code == 0, shown.output
    header, body = shown.stdout.split("\n", 1)
    assert header.startswith("# id pol-1, version 1, created 2030-03-17 17:46:40 UTC")
    assert body == (
        "name: ops-shell\nkind: target_connect\nsubjects:\n  groups:\n  - ops\n"
        "targets:\n  names:\n  - web-1\n  environments:\n  - prod\nverbs:\n- shell\n"
    )


def test_create_refuses_an_existing_name_before_creating_anything(
    service: FakeClient, policies: FakePolicies, tmp_path: Path
) -> None:
    zli("policy", "create", write(tmp_path, SHELL_POLICY))
    two = EXAMPLES["session_recording"] + "---\n" + SHELL_POLICY
    result = zli("policy", "create", write(tmp_path, two, "two.yaml"))
    assert result.exit_code == 10
    assert "two.yaml:10: the policy 'ops-shell' exists already" in result.stderr
    assert [p.name for p in policies.current()] == ["ops-shell"]


def test_list_reads_every_page(service: FakeClient, policies: FakePolicies) -> None:
    for name in ("c", "a", "b"):
        policies.add(
            policy_pb.Policy(
                name=name, description=f"about {name}", rego=policy_pb.RegoPolicy(module="x")
            )
        )
    result = zli("policy", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "VERSION", "UPDATED", "(UTC)", "ID", "DESCRIPTION"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["a", "rego", "1"],
        ["b", "rego", "1"],
        ["c", "rego", "1"],
    ]
    assert len(service.requests("ListPolicies")) == 2  # FakePolicies pages by 2


def test_export_then_import_changes_nothing(
    service: FakeClient, policies: FakePolicies, tmp_path: Path
) -> None:
    everything = "---\n".join(EXAMPLES.values()).replace("[db-jump]", "[db-jump, web-1]")
    # The just-in-time example names `ops-shell`, which the same file creates.
    created = zli("policy", "import", write(tmp_path, everything))
    assert created.exit_code == 0, created.output
    assert len(service.requests("CreatePolicy")) == len(EXAMPLES)
    jit = next(p for p in policies.current() if p.name == "ops-break-glass")
    ops_shell = next(p for p in policies.current() if p.name == "ops-shell")
    assert list(jit.just_in_time.policy_ids) == [ops_shell.id]

    exported = tmp_path / "export.yaml"
    result = zli("policy", "export", "-o", str(exported))
    assert result.exit_code == 0, result.output
    assert f"Exported {len(EXAMPLES)} policies to {exported}." in result.stderr
    assert "policies:\n- ops-shell\n" in exported.read_text()  # ids are written as names
    service.calls.clear()
    again = zli("policy", "import", str(exported))
    assert again.exit_code == 0, again.output
    assert again.stdout.count("Unchanged policy") == len(EXAMPLES)
    assert changes(service) == []


def test_export_one_policy_to_stdout(policies: FakePolicies, tmp_path: Path) -> None:
    zli("policy", "create", write(tmp_path, SHELL_POLICY + "---\n" + EXAMPLES["rego"]))
    result = zli("policy", "export", "ops-shell")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("name: ops-shell\n")
    assert "kind: rego" not in result.stdout
    missing = zli("policy", "export", "nope")
    assert (missing.exit_code, missing.stderr) == (
        5,
        "zli: no policy 'nope': `zli policy list` shows them\n",
    )


# --- update, import: checked before anything changes ------------------------------------------


def test_import_updates_by_name_and_show_reads_earlier_versions(
    service: FakeClient, policies: FakePolicies, tmp_path: Path
) -> None:
    zli("policy", "create", write(tmp_path, SHELL_POLICY))
    changed = SHELL_POLICY.replace("verbs: [shell]", "verbs: [shell, exec]")
    dry = zli("policy", "import", "--dry-run", write(tmp_path, changed))
    assert dry.exit_code == 0, dry.output
    assert dry.stdout == (
        "Would update policy 'ops-shell'.\n"
        "Every policy is valid; nothing was changed (--dry-run).\n"
    )
    assert changes(service) == ["CreatePolicy"]
    result = zli("policy", "import", write(tmp_path, changed))
    assert result.stdout == "Updated policy 'ops-shell' (pol-1) to version 2.\n"
    now = zli("policy", "show", "ops-shell").stdout
    before = zli("policy", "show", "ops-shell", "--version", "1").stdout
    assert "- exec" in now
    assert "- exec" not in before
    assert service.requests("GetPolicy")[-1] == policy_pb.GetPolicyRequest(
        policy_id="pol-1", version=1
    )


def test_a_document_the_service_rejects_changes_nothing(
    service: FakeClient, policies: FakePolicies, tmp_path: Path
) -> None:
    policies.invalid["bad-rego"] = "1 error occurred: policy.rego:3: rego_parse_error: unexpected"
    text = SHELL_POLICY + "---\nname: bad-rego\nkind: rego\nmodule: |\n  package x\n  deny[\n"
    result = zli("policy", "import", write(tmp_path, text))
    assert result.exit_code == 8
    assert result.stderr == (
        f"zli: {tmp_path}/policies.yaml:10: the policy 'bad-rego' is not valid: "
        "1 error occurred: policy.rego:3: rego_parse_error: unexpected\n"
    )
    assert changes(service) == []


def test_bad_yaml_is_exit_8_with_the_line_and_changes_nothing(
    service: FakeClient, policies: FakePolicies, tmp_path: Path
) -> None:
    text = SHELL_POLICY + "---\nname: second\nkind: proxy\ndestinations: [db.internal]\n"
    result = zli("policy", "import", write(tmp_path, text))
    assert result.exit_code == 8
    assert result.stderr.startswith(
        f"zli: {tmp_path}/policies.yaml:12: 'db.internal' is not a destination"
    )
    unparsable = zli("policy", "create", "-", stdin="name: a\nkind: [\n")
    assert unparsable.exit_code == 8
    assert unparsable.stderr.startswith("zli: <stdin>:3: not valid YAML:")
    assert changes(service) == []
    assert not service.requests("CheckPolicy")


def test_a_kind_cannot_change(service: FakeClient, policies: FakePolicies, tmp_path: Path) -> None:
    zli("policy", "create", write(tmp_path, SHELL_POLICY))
    as_proxy = "name: ops-shell\nkind: proxy\n"
    result = zli("policy", "import", write(tmp_path, as_proxy))
    assert result.exit_code == 8
    assert "the policy 'ops-shell' is a target_connect policy and cannot become a proxy" in (
        result.stderr
    )
    assert changes(service) == ["CreatePolicy"]


def test_update_needs_an_existing_policy_and_can_rename_one(
    service: FakeClient, policies: FakePolicies, tmp_path: Path
) -> None:
    missing = zli("policy", "update", write(tmp_path, SHELL_POLICY))
    assert missing.exit_code == 5
    assert "there is no policy 'ops-shell' to update" in missing.stderr
    zli("policy", "create", write(tmp_path, SHELL_POLICY))
    renamed = SHELL_POLICY.replace("name: ops-shell", "name: ops-shells")
    result = zli("policy", "update", "--policy", "ops-shell", write(tmp_path, renamed))
    assert result.exit_code == 0, result.output
    assert [p.name for p in policies.current()] == ["ops-shells"]


def test_delete_asks_first(service: FakeClient, policies: FakePolicies) -> None:
    stored = policies.add(policy_pb.Policy(name="old", rego=policy_pb.RegoPolicy(module="x")))
    kept = zli("policy", "delete", "old", stdin="n\n")
    assert kept.exit_code == 1
    assert not service.requests("DeletePolicy")
    deleted = zli("policy", "delete", "old", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert service.requests("DeletePolicy") == [policy_pb.DeletePolicyRequest(policy_id=stored.id)]


# --- explain -----------------------------------------------------------------------------------

DENIED = policy_pb.Decision(
    decision_id="dec-1",
    effect=policy_pb.DECISION_EFFECT_DENY,
    decide_time=to_timestamp(1_900_000_000),
    reasons=[
        policy_pb.DecisionReason(
            policy_id="pol-1",
            policy_name="ops-shell",
            effect=policy_pb.DECISION_EFFECT_UNSPECIFIED,
            message="bob@example.com is not in group ops",
        ),
        policy_pb.DecisionReason(
            effect=policy_pb.DECISION_EFFECT_DENY,
            message="no policy allows shell on web-1 as root",
        ),
    ],
)


def test_explain_prints_every_reason_and_exits_11_when_denied(service: FakeClient) -> None:
    service.handlers["ExplainAccess"] = lambda _: policy_pb.ExplainAccessResponse(decision=DENIED)
    result = zli(
        "policy",
        "explain",
        "--user",
        "bob@example.com",
        "--target",
        "web-1",
        "--target-user",
        "root",
        "--verb",
        "shell",
    )
    assert result.exit_code == EXIT_DENIED == 11
    assert result.stdout == (
        "DENIED  bob@example.com: shell on web-1 as root\n"
        "decision dec-1 at 2030-03-17 17:46:40 UTC\n\n"
        "POLICY      EFFECT  REASON\n"
        "ops-shell   n/a     bob@example.com is not in group ops\n"
        "(built-in)  deny    no policy allows shell on web-1 as root\n"
    )
    [request] = service.requests("ExplainAccess")
    assert request.input.principal.subject.email == "bob@example.com"
    assert request.input.target_access == policy_pb.TargetAccess(
        target_id=WEB_ID, verb=mrzap_pb2.VERB_SHELL, target_user="root"
    )


def test_explain_allowed_exits_0_with_limits(service: FakeClient) -> None:
    allowed = policy_pb.Decision(
        decision_id="dec-2",
        effect=policy_pb.DECISION_EFFECT_ALLOW,
        max_session_duration=Duration(seconds=4 * 3600),
        record=mrzap_pb2.RecordSettings(output=True, input=True),
        reasons=[
            policy_pb.DecisionReason(
                policy_name="db-tunnels",
                effect=policy_pb.DECISION_EFFECT_ALLOW,
                message="developers may tunnel to db.internal:5432",
            )
        ],
    )
    service.handlers["ExplainAccess"] = lambda _: policy_pb.ExplainAccessResponse(decision=allowed)
    # A target named by id is not looked up: plain users may not list targets.
    service.handlers["ListTargets"] = lambda _: pytest.fail("listed targets")
    result = zli(
        "policy",
        "explain",
        "--target",
        WEB_ID,
        "--verb",
        "tunnel",
        "--destination",
        "db.internal:5432",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert '"effect": "DECISION_EFFECT_ALLOW"' in result.stdout
    [request] = service.requests("ExplainAccess")
    assert not request.input.HasField("principal") or request.input.principal.ByteSize() == 0
    assert request.input.target_access.destination == mrzap_pb2.Destination(
        host="db.internal", port=5432
    )
    text = zli("policy", "explain", "--target", WEB_ID, "--verb", "tunnel")
    assert "ALLOWED  you: tunnel on" in text.stdout
    assert "longest session 4h; recorded: output and input" in text.stdout


def test_explain_refuses_bad_input_before_calling(service: FakeClient) -> None:
    bad_verb = zli("policy", "explain", "--target", "web-1", "--verb", "fly")
    assert bad_verb.exit_code == 2
    bad_destination = zli("policy", "explain", "--target", "web-1", "--destination", "db")
    assert bad_destination.exit_code == 2
    assert "is not a destination like" in bad_destination.stderr
    unknown = zli("policy", "explain", "--target", "web-9")
    assert unknown.exit_code == 5
    assert not service.requests("ExplainAccess")


# --- test --------------------------------------------------------------------------------------

MODULE = "package mrzap.custom.contractors\n\nimport rego.v1\n"


def test_policy_test_prints_each_result(
    service: FakeClient, policies: FakePolicies, tmp_path: Path
) -> None:
    policies.test_results = [
        policy_pb.RegoTestResult(name="test_a", passed=True),
        policy_pb.RegoTestResult(name="test_b", passed=False, message="false or undefined"),
    ]
    result = zli("policy", "test", write(tmp_path, MODULE, "contractors.rego"))
    assert result.exit_code == EXIT_TESTS_FAILED == 12
    assert result.stdout == ("PASS  test_a\nFAIL  test_b: false or undefined\n1 passed, 1 failed\n")
    [request] = service.requests("CheckPolicy")
    assert request.policy.rego.module == MODULE
    policies.test_results = policies.test_results[:1]
    assert zli("policy", "test", str(tmp_path / "contractors.rego")).exit_code == 0
    policies.test_results = []
    untested = zli("policy", "test", str(tmp_path / "contractors.rego"))
    assert untested.stdout.endswith("contractors.rego is valid; it has no test_ rules.\n")


def test_policy_test_shows_the_engines_message_for_a_bad_module(
    service: FakeClient, tmp_path: Path
) -> None:
    def reject(_: object) -> None:
        raise InvalidArgument("rego_parse_error: unexpected eof token")

    service.handlers["CheckPolicy"] = reject
    path = write(tmp_path, "package mrzap.custom.x\ndeny[\n", "bad.rego")
    result = zli("policy", "test", path)
    assert (result.exit_code, result.stderr) == (
        8,
        f"zli: {path}: rego_parse_error: unexpected eof token\n",
    )
    missing = zli("policy", "test", str(tmp_path / "nowhere.rego"))
    assert missing.exit_code == 8
    assert "cannot read" in missing.stderr


# --- access ------------------------------------------------------------------------------------

REQUEST = policy_pb.AccessRequest(
    id="req-1",
    policy_id="pol-9",
    requester_email="bob@example.com",
    reason="incident 42",
    duration=Duration(seconds=7200),
    state=policy_pb.ACCESS_REQUEST_STATE_PENDING,
)


def test_access_request_names_the_policy_and_says_what_next(
    service: FakeClient, policies: FakePolicies
) -> None:
    policies.versions["pol-9"] = [policy_pb.Policy(id="pol-9", name="db-break-glass")]
    service.handlers["RequestAccess"] = lambda _: policy_pb.RequestAccessResponse(
        access_request=REQUEST
    )
    result = zli(
        "access", "request", "db-break-glass", "--duration", "2h", "--reason", "incident 42"
    )
    assert result.exit_code == 0, result.output
    assert service.requests("RequestAccess") == [
        policy_pb.RequestAccessRequest(
            policy_id="pol-9", reason="incident 42", duration=Duration(seconds=7200)
        )
    ]
    assert result.stdout == (
        "Access request req-1 for 'db-break-glass' (2h) is pending: "
        "an approver runs `zli access approve req-1`.\n"
    )
    needs_reason = zli("access", "request", "db-break-glass")
    assert needs_reason.exit_code == 2


def test_users_who_may_not_list_policies_name_them_by_id(service: FakeClient) -> None:
    def refuse(_: object) -> None:
        raise PermissionDenied("only administrators may do this")

    service.handlers["ListPolicies"] = refuse
    approved = policy_pb.AccessRequest(
        id="req-2", policy_id="pol-9", state=policy_pb.ACCESS_REQUEST_STATE_APPROVED
    )
    approved.expire_time.FromSeconds(1_900_003_600)
    service.handlers["RequestAccess"] = lambda _: policy_pb.RequestAccessResponse(
        access_request=approved
    )
    result = zli("access", "request", "pol-9", "--reason", "deploy")
    assert result.exit_code == 0, result.output
    assert service.requests("RequestAccess")[0].policy_id == "pol-9"
    assert service.requests("RequestAccess")[0].duration.seconds == 3600  # the default
    assert result.stdout == (
        "Access request req-2 for 'pol-9' is approved until 2030-03-17 18:46:40 UTC.\n"
    )


def test_access_list_approve_and_deny(service: FakeClient, policies: FakePolicies) -> None:
    policies.versions["pol-9"] = [policy_pb.Policy(id="pol-9", name="db-break-glass")]
    service.handlers["ListAccessRequests"] = lambda _: policy_pb.ListAccessRequestsResponse(
        access_requests=[REQUEST]
    )
    listed = zli("access", "list", "--state", "pending")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == [
        "ID     POLICY          REQUESTER        STATE    DURATION  EXPIRES (UTC)  REASON",
        "req-1  db-break-glass  bob@example.com  pending  2h        -              incident 42",
    ]
    assert list(service.requests("ListAccessRequests")[0].states) == [
        policy_pb.ACCESS_REQUEST_STATE_PENDING
    ]

    def decide(state: policy_pb.AccessRequestState.ValueType) -> policy_pb.AccessRequest:
        decided = policy_pb.AccessRequest()
        decided.CopyFrom(REQUEST)
        decided.state = state
        decided.expire_time.FromSeconds(1_900_007_200)
        return decided

    service.handlers["ApproveAccess"] = lambda _: policy_pb.ApproveAccessResponse(
        access_request=decide(policy_pb.ACCESS_REQUEST_STATE_APPROVED)
    )
    service.handlers["DenyAccess"] = lambda _: policy_pb.DenyAccessResponse(
        access_request=decide(policy_pb.ACCESS_REQUEST_STATE_DENIED)
    )
    approved = zli("access", "approve", "req-1", "--comment", "go ahead")
    assert approved.exit_code == 0, approved.output
    assert approved.stdout == (
        "Access request req-1 for 'db-break-glass' is approved until 2030-03-17 19:46:40 UTC. "
        "Requested by bob@example.com.\n"
    )
    assert service.requests("ApproveAccess") == [
        policy_pb.ApproveAccessRequest(access_request_id="req-1", comment="go ahead")
    ]
    denied = zli("access", "deny", "req-1")
    assert "is denied. Requested by bob@example.com." in denied.stdout
    assert service.requests("DenyAccess")[0].access_request_id == "req-1"
