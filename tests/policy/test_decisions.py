"""Decisions for every policy type and field, on BOTH embedded engines, which must agree.

One organisation ("the world") holds a policy of every kind; each case is a request and what the
decision must be, with fragments its reasons must contain. Every case runs on rego-cpp (the
default engine) and on OPA's Go engine (the reference), and a last test compares the two engines'
whole decisions, reasons included, case by case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mrzap.testing import FixedClock
from policy._decider import PolicyDecider
from policy._engine import engine_from_spec
from policy._model import (
    ActiveAccess,
    ApiAccess,
    ApiCall,
    Decision,
    Destination,
    Effect,
    JustInTimeRules,
    KubernetesRules,
    OrganizationControlsRules,
    Policy,
    PolicyRules,
    Principal,
    ProxyRules,
    RegoRules,
    SessionRecordingRules,
    SubjectSelector,
    TargetAccess,
    TargetConnectRules,
    TargetSelector,
    Verb,
)
from policy.testing import StaticPolicies

NOW = 1_800_000_000.0
ENGINES = ["embedded", "opa"]

CUSTOM = """\
# Contractors never reach production, and the CI key never deletes targets.
package mrzap.custom.house_rules

import rego.v1

deny contains "contractors may not use production" if {
	"contractors" in input.principal.groups
	input.target_access.environment_id == "prod"
}

deny contains "the CI key may not delete targets" if {
	input.principal.api_key_id == "mzk_ci"
	input.api_call.method == "/bastion.registry.v1.RegistryService/DeleteTarget"
}
"""


def _policy(policy_id: str, rules: PolicyRules) -> Policy:
    return Policy(policy_id, policy_id.replace("_", "-"), "", rules, 1, NOW, NOW)


WORLD = [
    _policy(
        "ops_shell",
        TargetConnectRules(
            SubjectSelector(groups=("ops",)),
            TargetSelector(environment_ids=("prod",)),
            ("root", "ubuntu"),
            (Verb.SHELL, Verb.EXEC),
            max_session_duration=2 * 3600,
        ),
    ),
    _policy(
        "bob_files",
        TargetConnectRules(
            SubjectSelector(user_emails=("Bob@Example.com",)),
            TargetSelector(target_ids=("dev-1",)),
            ("ubuntu",),
            (Verb.FILE_TRANSFER,),
        ),
    ),
    _policy(
        "ci_deploy",
        TargetConnectRules(
            SubjectSelector(api_key_ids=("mzk_ci",)),
            TargetSelector(target_ids=("web-1",)),
            ("deploy",),
            (Verb.EXEC,),
            max_session_duration=600,
        ),
    ),
    _policy(
        "ops_kube",
        KubernetesRules(
            SubjectSelector(groups=("ops",)),
            TargetSelector(target_ids=("k8s-1",)),
            ("viewer",),
            ("system:viewers",),
        ),
    ),
    _policy(
        "dev_db",
        ProxyRules(
            SubjectSelector(groups=("dev",)),
            TargetSelector(environment_ids=("staging",)),
            (Destination("db.internal", 5432),),
            ("postgres",),
        ),
    ),
    _policy(
        "record_prod",
        SessionRecordingRules(
            SubjectSelector(groups=("ops",)), TargetSelector(environment_ids=("prod",)), True
        ),
    ),
    _policy(
        "vault_break_glass",
        TargetConnectRules(
            SubjectSelector(),
            TargetSelector(target_ids=("vault-1",)),
            ("root",),
            (Verb.SHELL,),
        ),
    ),
    _policy(
        "dev_jit",
        JustInTimeRules(
            SubjectSelector(groups=("dev",)),
            ("vault_break_glass",),
            SubjectSelector(groups=("ops",)),
            False,
            3600,
        ),
    ),
    _policy("org", OrganizationControlsRules(True, 15 * 60, 3600)),
    _policy("house_rules", RegoRules(CUSTOM)),
]

ACTIVE = [
    ActiveAccess("req-bob", "u-bob", "bob@example.com", "dev_jit", NOW + 600),
    # Compiled while it lasted; the decision must still see that it has ended.
    ActiveAccess("req-dave", "u-dave", "dave@example.com", "dev_jit", NOW - 60),
]


def _user(name: str, *groups: str, mfa_age: float | None = 60.0, admin: bool = False) -> Principal:
    return Principal(
        user_id=f"u-{name}",
        issuer="https://idp.example.com",
        subject=f"sub-{name}",
        email=f"{name}@example.com",
        groups=groups,
        admin=admin,
        mfa_verified_at=None if mfa_age is None else NOW - mfa_age,
    )


ALICE = _user("alice", "ops")
BOB = _user("bob", "dev")
CAROL = _user("carol", "ops", "contractors")
DAVE = _user("dave", "dev")
ERIN = _user("erin", "ops", mfa_age=3600)
FRANK = _user("frank", "ops", mfa_age=None)
OLIVIA = _user("olivia", admin=True)
CI = Principal(api_key_id="mzk_ci", admin=True)
ANONYMOUS = Principal()


def shell(
    target: str, environment: str, user: str = "root", verb: Verb = Verb.SHELL
) -> TargetAccess:
    return TargetAccess(target, environment, verb, user)


def tunnel(host: str, port: int, user: str = "postgres") -> TargetAccess:
    return TargetAccess("jump-1", "staging", Verb.TUNNEL, user, Destination(host, port))


def kube(user: str, *groups: str) -> TargetAccess:
    return TargetAccess("k8s-1", "prod", Verb.KUBE, user, kube_groups=groups)


def call(
    access: ApiAccess, method: str = "/bastion.registry.v1.RegistryService/DeleteTarget"
) -> ApiCall:
    return ApiCall(method, access)


@dataclasses.dataclass(frozen=True)
class Case:
    """A request, whether it is allowed, and fragments its reasons must hold."""

    name: str
    principal: Principal
    action: TargetAccess | ApiCall
    allowed: bool
    says: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    duration: float = 0.0
    record_input: bool = False


CASES = [
    # Target connect: group subject, environment membership, each field.
    Case(
        "group-and-environment",
        ALICE,
        shell("web-1", "prod"),
        True,
        ('ops-shell: allows a shell as "root" on target web-1',),
        ("ops_shell",),
        3600,
        True,
    ),
    Case(
        "second-verb-and-user",
        ALICE,
        shell("web-1", "prod", "ubuntu", Verb.EXEC),
        True,
        ("allows commands",),
        ("ops_shell",),
        3600,
        True,
    ),
    Case(
        "verb-not-allowed",
        ALICE,
        shell("web-1", "prod", "root", Verb.FILE_TRANSFER),
        False,
        ("ops-shell: does not allow file transfers", "no policy allows file transfers"),
    ),
    Case(
        "target-user-not-allowed",
        ALICE,
        shell("web-1", "prod", "postgres"),
        False,
        ('ops-shell: does not allow acting as "postgres"',),
    ),
    Case(
        "other-environment",
        ALICE,
        shell("dev-1", "dev"),
        False,
        ('no policy allows a shell as "root" on target dev-1',),
    ),
    Case("group-not-member", BOB, shell("web-1", "prod"), False, ("no policy allows",)),
    # Email subject (case-insensitive), target id; the organisation caps the default duration.
    Case(
        "email-subject",
        BOB,
        shell("dev-1", "dev", "ubuntu", Verb.FILE_TRANSFER),
        True,
        ("bob-files: allows file transfers",),
        ("bob_files",),
        3600,
    ),
    Case(
        "email-subject-other-verb",
        BOB,
        shell("dev-1", "dev", "ubuntu"),
        False,
        ("bob-files: does not allow a shell",),
    ),
    # API keys as subjects; they are not asked for MFA.
    Case(
        "api-key-subject",
        CI,
        shell("web-1", "prod", "deploy", Verb.EXEC),
        True,
        ("ci-deploy: allows commands",),
        ("ci_deploy",),
        600,
    ),
    Case("api-key-other-verb", CI, shell("web-1", "prod", "deploy"), False, ("no policy allows",)),
    # Kubernetes: cluster users and groups.
    Case(
        "kube-allowed",
        ALICE,
        kube("viewer", "system:viewers"),
        True,
        ("ops-kube: allows Kubernetes access",),
        ("ops_kube",),
        3600,
        True,
    ),
    Case(
        "kube-user-not-allowed",
        ALICE,
        kube("admin"),
        False,
        ('ops-kube: does not allow acting as "admin"',),
    ),
    Case(
        "kube-group-not-allowed",
        ALICE,
        kube("viewer", "system:masters"),
        False,
        ("ops-kube: does not allow the Kubernetes groups asked for",),
    ),
    # Proxy: destinations and destination users.
    Case(
        "tunnel-allowed",
        BOB,
        tunnel("DB.internal", 5432),
        True,
        ("dev-db: allows tunnels",),
        ("dev_db",),
        3600,
    ),
    Case(
        "tunnel-destination-not-allowed",
        BOB,
        tunnel("other.internal", 5432),
        False,
        ("dev-db: does not allow other.internal:5432 as a destination",),
    ),
    Case(
        "tunnel-port-not-allowed",
        BOB,
        tunnel("db.internal", 5433),
        False,
        ("does not allow db.internal:5433",),
    ),
    Case(
        "tunnel-user-not-allowed",
        BOB,
        tunnel("db.internal", 5432, "root"),
        False,
        ('dev-db: does not allow acting as "root"',),
    ),
    # Session recording: input only where a policy says so.
    Case(
        "recording-input",
        ALICE,
        shell("web-1", "prod"),
        True,
        ("record-prod: records what",),
        ("ops_shell",),
        3600,
        True,
    ),
    # Just-in-time access: approved and unexpired, expired, never asked.
    Case(
        "jit-approved",
        BOB,
        shell("vault-1", "vault"),
        True,
        ("through just-in-time request req-bob",),
        ("vault_break_glass",),
        3600,
    ),
    Case("jit-expired", DAVE, shell("vault-1", "vault"), False, ("no policy allows",)),
    Case("jit-not-asked", ALICE, shell("vault-1", "vault"), False, ("no policy allows",)),
    # Organisation controls: MFA within the window.
    Case(
        "mfa-stale",
        ERIN,
        shell("web-1", "prod"),
        False,
        ("org: MFA is required within 15 min, and the last one was 1 h ago",),
    ),
    Case(
        "mfa-missing",
        FRANK,
        shell("web-1", "prod"),
        False,
        ("org: MFA is required, and this session has not passed it",),
    ),
    # A custom deny rule wins over an allow.
    Case(
        "custom-deny-wins",
        CAROL,
        shell("web-1", "prod"),
        False,
        ("house-rules: contractors may not use production", "ops-shell: allows"),
    ),
    # API calls: access classes, and custom denials of them.
    Case(
        "api-admin-denied", ALICE, call(ApiAccess.ADMIN), False, ("only administrators may call",)
    ),
    Case("api-admin-allowed", OLIVIA, call(ApiAccess.ADMIN), True, ("is an administrator",)),
    Case(
        "api-custom-deny",
        CI,
        call(ApiAccess.ADMIN),
        False,
        ("house-rules: the CI key may not delete targets",),
    ),
    Case("api-custom-deny-other-method", CI, call(ApiAccess.ADMIN, "/x.v1.X/Other"), True),
    Case(
        "api-public",
        ANONYMOUS,
        call(ApiAccess.PUBLIC, "/bastion.auth.v1.AuthService/Login"),
        True,
        ("is open to public callers",),
    ),
    Case(
        "api-user-anonymous",
        ANONYMOUS,
        call(ApiAccess.USER),
        False,
        ("needs a signed-in user or an API key",),
    ),
    Case("api-user", BOB, call(ApiAccess.USER, "/x.v1.X/Y"), True, ("may call /x.v1.X/Y",)),
]


async def _active() -> list[ActiveAccess]:
    return ACTIVE


@pytest_asyncio.fixture(params=ENGINES)
async def decider(request: pytest.FixtureRequest) -> AsyncIterator[PolicyDecider]:
    """A decider over the world, on one of the embedded engines."""
    decider = PolicyDecider(
        StaticPolicies(list(WORLD)),
        engine_from_spec(request.param),
        FixedClock(NOW),
        _active,
        refresh_interval=0,
    )
    await decider.start()
    yield decider
    await decider.close()


def _text(decision: Decision) -> str:
    return "\n".join(f"{r.policy_name}: {r.message} [{r.effect.value}]" for r in decision.reasons)


@pytest.mark.asyncio
async def test_every_case(decider: PolicyDecider) -> None:
    """Each case decides as expected, with the reasons that say why."""
    failures = []
    for case in CASES:
        decision = await decider.decide(case.principal, case.action)
        text = _text(decision)
        problems = [f"allowed={decision.allowed}"] if decision.allowed != case.allowed else []
        problems += [f"no reason says {s!r}" for s in case.says if s not in text]
        if case.allowed:
            if decision.policy_ids != tuple(sorted(case.policies)):
                problems.append(f"policy_ids={decision.policy_ids}")
            if decision.max_session_duration != case.duration:
                problems.append(f"duration={decision.max_session_duration}")
            if decision.record_input != case.record_input:
                problems.append(f"record_input={decision.record_input}")
        if problems:
            failures.append(f"{case.name}: {problems}\n{text}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.asyncio
async def test_denials_and_allows_are_consistent(decider: PolicyDecider) -> None:
    """An allowed decision has an allowing reason and no denying one; a denial has a denying one."""
    for case in CASES:
        decision = await decider.decide(case.principal, case.action)
        effects = {reason.effect for reason in decision.reasons}
        assert (Effect.DENY in effects) != decision.allowed, case.name
        assert decision.decision_id
        assert decision.record_output == isinstance(case.action, TargetAccess)


@pytest.mark.asyncio
async def test_explain_gives_a_reason_per_policy_considered(decider: PolicyDecider) -> None:
    """An explanation covers the policies about the target or the user, and counts the rest."""
    decision = await decider.decide(ALICE, shell("dev-1", "dev"), explain=True)
    by_policy = {reason.policy_name: reason for reason in decision.reasons if reason.policy_id}
    assert not decision.allowed
    assert "does not cover target dev-1" in by_policy["ops-shell"].message
    assert "is a Kubernetes policy" in by_policy["ops-kube"].message
    assert "does not cover target dev-1" in by_policy["record-prod"].message
    assert "does not apply to alice@example.com" in by_policy["bob-files"].message
    assert by_policy["org"].message == "no connection may last longer than 1 h"
    assert by_policy["house-rules"].message == "custom Rego: neither denies nor allows this request"
    assert all(r.effect is Effect.NOT_APPLICABLE for r in by_policy.values())
    others = [r.message for r in decision.reasons if "other policies" in r.message]
    assert others == ["3 other policies neither cover target dev-1 nor apply to alice@example.com"]


@pytest.mark.asyncio
async def test_explain_names_ended_jit_access_and_what_can_be_asked(
    decider: PolicyDecider,
) -> None:
    """A user whose just-in-time access ended is told so, and which policy they may ask under."""
    decision = await decider.decide(DAVE, shell("vault-1", "vault"), explain=True)
    text = _text(decision)
    assert not decision.allowed
    assert "just-in-time request req-dave ended at 2027-01-15T07:59:00Z" in text
    assert "dev-jit: gives the access of its policies" in text


@pytest.mark.asyncio
async def test_decision_for_an_allowed_request_names_only_what_decided(
    decider: PolicyDecider,
) -> None:
    """An allowed decision's reasons are the allowing ones (and recording), not every miss."""
    decision = await decider.decide(ALICE, shell("web-1", "prod"))
    assert [r.policy_name for r in decision.reasons] == ["ops-shell", "record-prod"]


@pytest.mark.asyncio
async def test_engines_agree_on_every_case() -> None:
    """Both engines give the same decision, reasons included, for every case and explanation."""
    deciders = [
        PolicyDecider(StaticPolicies(list(WORLD)), engine_from_spec(name), FixedClock(NOW), _active)
        for name in ENGINES
    ]
    for decider in deciders:
        await decider.start()
    try:
        for case in CASES:
            for explain in (False, True):
                embedded, opa = [
                    await d.decide(case.principal, case.action, explain=explain) for d in deciders
                ]
                assert dataclasses.replace(embedded, decision_id="") == dataclasses.replace(
                    opa, decision_id=""
                ), (case.name, explain)
    finally:
        for decider in deciders:
            await decider.close()
