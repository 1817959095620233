"""PolicyService over real gRPC with TLS, served by `start_server` with the embedded engine: policy
versions, validation on the engine, who may call what, explanations, just-in-time access, and
the authorization interceptor deciding every call with the shipped and custom Rego."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration

from audit import EventQuery
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.auth.v1 import auth_service_pb2_grpc as auth_grpc
from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as pb
from bastion.policy.v1 import policy_service_pb2_grpc as pb_grpc
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from bastion.registry.v1 import registry_service_pb2_grpc as registry_grpc
from mrzap.testing import TestIdentityProvider
from mrzapd._server import start_server
from policy.testing import OpaTestServer

from ._rpc import Metadata, bearer, refused
from .conftest import ADMIN_EMAIL, Service, service_config

HOUR = Duration(seconds=3600)

NO_KEY_LISTS_USERS = """
package mrzap.custom.no_key_lists_users

import rego.v1

deny contains "API keys may not list users" if {
	input.api_call.method == "/bastion.auth.v1.AuthService/ListUsers"
	input.principal.api_key_id != ""
}

test_keys_denied if {
	deny["API keys may not list users"] with input.api_call.method as "/bastion.auth.v1.AuthService/ListUsers" with input.principal.api_key_id as "mzk_1"
}

test_users_pass if {
	count(deny) == 0 with input.api_call.method as "/bastion.auth.v1.AuthService/ListUsers" with input.principal.api_key_id as ""
}

test_that_fails if {
	count(deny) == 1 with input.api_call.method as "/x" with input.principal.api_key_id as "k"
}
"""  # noqa: E501 - Rego test rules are one line each


def shells(emails: Sequence[str] = (), groups: Sequence[str] = (), env: str = "") -> pb.Policy:
    return pb.Policy(
        name="shells",
        description="developers get shells",
        target_connect=pb.TargetConnectPolicy(
            subjects=pb.SubjectSelector(user_emails=list(emails), groups=list(groups))
            if emails or groups
            else None,
            targets=pb.TargetSelector(environment_ids=[env]) if env else None,
            target_users=["dev"],
            verbs=[mrzap_pb2.VERB_SHELL],
        ),
    )


def shell_input(target_id: str, email: str = "") -> pb.DecisionInput:
    decision_input = pb.DecisionInput(
        target_access=pb.TargetAccess(
            target_id=target_id, verb=mrzap_pb2.VERB_SHELL, target_user="dev"
        )
    )
    if email:
        decision_input.principal.subject.email = email
    return decision_input


async def change_events(service: Service) -> list[str]:
    events, _ = await service.running.audit.list_events(
        EventQuery(kinds=frozenset({audit_pb.EVENT_KIND_API_CALL}), text="policy "), 100
    )
    return [e.reasons[0].message for e in events if e.api_call.status_code == 0 and e.reasons]


@pytest.mark.asyncio
async def test_policies_are_versioned_and_every_change_is_audited(service: Service) -> None:
    admin = await service.session(ADMIN_EMAIL)
    created = (
        await service.policy.CreatePolicy(
            pb.CreatePolicyRequest(policy=shells(groups=["developers"])), metadata=admin
        )
    ).policy
    assert created.id
    assert created.version == 1
    update = pb.Policy()
    update.CopyFrom(shells(groups=["developers", "sre"]))
    update.id = created.id
    updated = (
        await service.policy.UpdatePolicy(pb.UpdatePolicyRequest(policy=update), metadata=admin)
    ).policy
    assert updated.version == 2
    assert list(updated.target_connect.subjects.groups) == ["developers", "sre"]
    first = await service.policy.GetPolicy(
        pb.GetPolicyRequest(policy_id=created.id, version=1), metadata=admin
    )
    assert list(first.policy.target_connect.subjects.groups) == ["developers"]
    listed = await service.policy.ListPolicies(pb.ListPoliciesRequest(), metadata=admin)
    assert [p.version for p in listed.policies] == [2]
    # The kind of a policy cannot change.
    update.ClearField("target_connect")
    update.rego.module = NO_KEY_LISTS_USERS
    await refused(
        service.policy.UpdatePolicy(pb.UpdatePolicyRequest(policy=update), metadata=admin),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await service.policy.DeletePolicy(pb.DeletePolicyRequest(policy_id=created.id), metadata=admin)
    await refused(
        service.policy.GetPolicy(pb.GetPolicyRequest(policy_id=created.id), metadata=admin),
        grpc.StatusCode.NOT_FOUND,
    )
    messages = await change_events(service)
    assert [m.split(" ", 1)[0] for m in messages] == ["deleted", "updated", "created"]


@pytest.mark.asyncio
async def test_every_kind_of_policy_round_trips(service: Service) -> None:
    admin = await service.session(ADMIN_EMAIL)
    subjects = pb.SubjectSelector(user_emails=["a@example.com"], api_key_ids=["mzk_0"])
    targets = pb.TargetSelector(target_ids=["t-1"])
    policies = [
        shells(groups=["g"]),
        pb.Policy(
            name="kube",
            kubernetes=pb.KubernetesPolicy(
                subjects=subjects,
                clusters=targets,
                cluster_users=["viewer"],
                cluster_groups=["system:viewers"],
                max_session_duration=HOUR,
            ),
        ),
        pb.Policy(
            name="db",
            proxy=pb.ProxyPolicy(
                subjects=subjects,
                targets=targets,
                destinations=[mrzap_pb2.Destination(host="db.internal", port=5432)],
                target_users=["app"],
            ),
        ),
        pb.Policy(
            name="recording",
            session_recording=pb.SessionRecordingPolicy(
                subjects=subjects, targets=targets, record_input=True
            ),
        ),
        pb.Policy(
            name="controls",
            organization_controls=pb.OrganizationControlsPolicy(
                mfa_required=True, mfa_window=HOUR, max_session_ttl=Duration(seconds=7200)
            ),
        ),
        pb.Policy(name="custom", rego=pb.RegoPolicy(module=NO_KEY_LISTS_USERS)),
    ]
    for policy in policies:
        stored = (
            await service.policy.CreatePolicy(pb.CreatePolicyRequest(policy=policy), metadata=admin)
        ).policy
        kind = policy.WhichOneof("spec") or ""
        assert stored.WhichOneof("spec") == kind
        assert getattr(stored, kind) == getattr(policy, kind)
        assert (stored.name, stored.description, stored.version) == (
            policy.name,
            policy.description,
            1,
        )


@pytest.mark.asyncio
async def test_invalid_policies_are_refused_with_the_engines_message_and_nothing_is_stored(
    service: Service,
) -> None:
    admin = await service.session(ADMIN_EMAIL)
    await refused(
        service.policy.CreatePolicy(
            pb.CreatePolicyRequest(policy=pb.Policy(name="empty")), metadata=admin
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    broken = 'package mrzap.custom.broken\n\nimport rego.v1\n\ndeny contains "x" if {\n'
    message = await refused(
        service.policy.CreatePolicy(
            pb.CreatePolicyRequest(
                policy=pb.Policy(name="broken", rego=pb.RegoPolicy(module=broken))
            ),
            metadata=admin,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert message
    listed = await service.policy.ListPolicies(pb.ListPoliciesRequest(), metadata=admin)
    assert list(listed.policies) == []


@pytest.mark.asyncio
async def test_check_policy_runs_the_modules_tests(service: Service) -> None:
    admin = await service.session(ADMIN_EMAIL)
    checked = await service.policy.CheckPolicy(
        pb.CheckPolicyRequest(policy=pb.Policy(rego=pb.RegoPolicy(module=NO_KEY_LISTS_USERS))),
        metadata=admin,
    )
    results = {r.name: r.passed for r in checked.test_results}
    assert results == {"test_keys_denied": True, "test_that_fails": False, "test_users_pass": True}
    listed = await service.policy.ListPolicies(pb.ListPoliciesRequest(), metadata=admin)
    assert list(listed.policies) == []


@pytest.mark.asyncio
async def test_only_administrators_manage_policies(service: Service) -> None:
    user = await service.session("dev@example.com")
    calls: list[tuple[Any, Any]] = [
        (service.policy.CreatePolicy, pb.CreatePolicyRequest(policy=shells(groups=["g"]))),
        (service.policy.ListPolicies, pb.ListPoliciesRequest()),
        (service.policy.GetPolicy, pb.GetPolicyRequest(policy_id="x")),
        (service.policy.UpdatePolicy, pb.UpdatePolicyRequest(policy=shells())),
        (service.policy.DeletePolicy, pb.DeletePolicyRequest(policy_id="x")),
        (service.policy.CheckPolicy, pb.CheckPolicyRequest(policy=shells())),
    ]
    for call, request in calls:
        message = await refused(call(request, metadata=user), grpc.StatusCode.PERMISSION_DENIED)
        assert "administrators" in message


@pytest.mark.asyncio
async def test_explain_says_why_for_oneself_and_for_others_only_to_administrators(
    service: Service,
) -> None:
    target = await service.target()
    admin = await service.session(ADMIN_EMAIL)
    dev = await service.session("dev@example.com", ("developers",))
    other = await service.session("sales@example.com", ("sales",))
    await service.policy.CreatePolicy(
        pb.CreatePolicyRequest(policy=shells(groups=["developers"], env=target.environment_id)),
        metadata=admin,
    )
    mine = await service.policy.ExplainAccess(
        pb.ExplainAccessRequest(input=shell_input(target.id)), metadata=dev
    )
    assert mine.decision.effect == pb.DECISION_EFFECT_ALLOW
    assert any(r.policy_name == "shells" for r in mine.decision.reasons)
    theirs = await service.policy.ExplainAccess(
        pb.ExplainAccessRequest(input=shell_input(target.id)), metadata=other
    )
    assert theirs.decision.effect == pb.DECISION_EFFECT_DENY
    assert theirs.decision.reasons
    await refused(
        service.policy.ExplainAccess(
            pb.ExplainAccessRequest(input=shell_input(target.id, "dev@example.com")),
            metadata=other,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    for_dev = await service.policy.ExplainAccess(
        pb.ExplainAccessRequest(input=shell_input(target.id, "dev@example.com")), metadata=admin
    )
    assert for_dev.decision.effect == pb.DECISION_EFFECT_ALLOW
    await refused(
        service.policy.ExplainAccess(
            pb.ExplainAccessRequest(input=shell_input(target.id, "nobody@example.com")),
            metadata=admin,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await refused(
        service.policy.ExplainAccess(
            pb.ExplainAccessRequest(input=shell_input("no-such-target")), metadata=dev
        ),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.asyncio
async def test_evaluate_access_is_for_service_roles_and_records_the_decision(
    service: Service,
) -> None:
    target = await service.target()
    admin = await service.session(ADMIN_EMAIL)
    decision_input = shell_input(target.id, "dev@example.com")
    request = pb.EvaluateAccessRequest(input=decision_input)
    await refused(
        service.policy.EvaluateAccess(request, metadata=admin), grpc.StatusCode.PERMISSION_DENIED
    )
    credential = service.running.service_credential.metadata()
    answer = await service.policy.EvaluateAccess(request, metadata=credential)
    assert answer.decision.effect == pb.DECISION_EFFECT_DENY
    events, _ = await service.running.audit.list_events(
        EventQuery(kinds=frozenset({audit_pb.EVENT_KIND_POLICY_DECISION}))
    )
    assert [e.policy_decision.decision_id for e in events] == [answer.decision.decision_id]


@pytest.mark.asyncio
async def test_grant_keys_are_listed_to_users(service: Service) -> None:
    user = await service.session("dev@example.com")
    listed = await service.policy.ListGrantKeys(pb.ListGrantKeysRequest(), metadata=user)
    assert [k.key_id for k in listed.grant_keys] == [
        k.key_id for k in service.running.grant_keys.public_keys
    ]
    await refused(
        service.policy.ListGrantKeys(pb.ListGrantKeysRequest()),
        grpc.StatusCode.UNAUTHENTICATED,
    )


@pytest.mark.asyncio
async def test_just_in_time_access_over_rpc(service: Service) -> None:
    target = await service.target()
    admin = await service.session(ADMIN_EMAIL)
    dev = await service.session("dev@example.com", ("developers",))
    lead = await service.session("lead@example.com", ("leads",))
    child = (
        await service.policy.CreatePolicy(
            pb.CreatePolicyRequest(
                policy=shells(emails=["nobody@example.com"], env=target.environment_id)
            ),
            metadata=admin,
        )
    ).policy
    jit = (
        await service.policy.CreatePolicy(
            pb.CreatePolicyRequest(
                policy=pb.Policy(
                    name="break glass",
                    just_in_time=pb.JustInTimePolicy(
                        subjects=pb.SubjectSelector(groups=["developers"]),
                        policy_ids=[child.id],
                        approvers=pb.SubjectSelector(groups=["leads"]),
                        max_duration=HOUR,
                    ),
                )
            ),
            metadata=admin,
        )
    ).policy
    explain = pb.ExplainAccessRequest(input=shell_input(target.id))
    before = await service.policy.ExplainAccess(explain, metadata=dev)
    assert before.decision.effect == pb.DECISION_EFFECT_DENY
    asked = (
        await service.policy.RequestAccess(
            pb.RequestAccessRequest(policy_id=jit.id, reason="incident 7", duration=HOUR),
            metadata=dev,
        )
    ).access_request
    assert asked.state == pb.ACCESS_REQUEST_STATE_PENDING
    await refused(
        service.policy.ApproveAccess(
            pb.ApproveAccessRequest(access_request_id=asked.id), metadata=dev
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    pending = await service.policy.ListAccessRequests(
        pb.ListAccessRequestsRequest(states=[pb.ACCESS_REQUEST_STATE_PENDING]), metadata=lead
    )
    assert [r.id for r in pending.access_requests] == [asked.id]
    approved = (
        await service.policy.ApproveAccess(
            pb.ApproveAccessRequest(access_request_id=asked.id, comment="ok"), metadata=lead
        )
    ).access_request
    assert approved.state == pb.ACCESS_REQUEST_STATE_APPROVED
    assert approved.decider_email == "lead@example.com"
    assert approved.expire_time.seconds - approved.decide_time.seconds == 3600
    after = await service.policy.ExplainAccess(explain, metadata=dev)
    assert after.decision.effect == pb.DECISION_EFFECT_ALLOW, after.decision.reasons


@pytest.mark.asyncio
async def test_custom_rego_can_deny_any_api_call(service: Service) -> None:
    admin = await service.session(ADMIN_EMAIL)
    auth = auth_grpc.AuthServiceStub(service.channel)
    key = await auth.CreateApiKey(
        auth_pb.CreateApiKeyRequest(name="ci", admin=True), metadata=admin
    )
    api_key: Metadata = bearer(key.secret)
    await auth.ListUsers(auth_pb.ListUsersRequest(), metadata=api_key)
    await service.policy.CreatePolicy(
        pb.CreatePolicyRequest(
            policy=pb.Policy(
                name="no key lists users", rego=pb.RegoPolicy(module=NO_KEY_LISTS_USERS)
            )
        ),
        metadata=admin,
    )
    message = await refused(
        auth.ListUsers(auth_pb.ListUsersRequest(), metadata=api_key),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "API keys may not list users" in message
    await auth.ListUsers(auth_pb.ListUsersRequest(), metadata=admin)
    events, _ = await service.running.audit.list_events(
        EventQuery(
            kinds=frozenset({audit_pb.EVENT_KIND_API_CALL}),
            outcomes=frozenset({audit_pb.EVENT_OUTCOME_DENIED}),
        )
    )
    assert events[0].api_call.method == "/bastion.auth.v1.AuthService/ListUsers"
    assert events[0].actor.api_key_id == key.api_key.id
    assert any(r.policy_name == "no key lists users" for r in events[0].reasons)


@pytest.mark.asyncio
async def test_admin_methods_of_other_roles_are_decided_too(service: Service) -> None:
    user = await service.session("dev@example.com")
    registry = registry_grpc.RegistryServiceStub(service.channel)
    message = await refused(
        registry.ListRegistrationKeys(registry_pb.ListRegistrationKeysRequest(), metadata=user),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "only administrators" in message


@pytest.mark.asyncio
async def test_an_engine_outage_denies_every_call_and_is_audited(
    idp: TestIdentityProvider, tmp_path: Path
) -> None:
    opa = OpaTestServer()
    await opa.start()
    running = await start_server(
        service_config(idp, tmp_path / "service", policy={"engine": opa.spec})
    )
    try:
        credentials = grpc.ssl_channel_credentials(running.tls.ca_cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", credentials) as channel:
            service = Service(running, channel, pb_grpc.PolicyServiceStub(channel), idp)
            user = await service.session("dev@example.com")
            auth = auth_grpc.AuthServiceStub(channel)
            await auth.WhoAmI(auth_pb.WhoAmIRequest(), metadata=user)
            await opa.stop()
            message = await refused(
                auth.WhoAmI(auth_pb.WhoAmIRequest(), metadata=user),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            assert "the policy engine is unavailable" in message
            await refused(
                auth.GetLoginConfiguration(auth_pb.GetLoginConfigurationRequest()),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            events, _ = await running.audit.list_events(
                EventQuery(
                    kinds=frozenset({audit_pb.EVENT_KIND_API_CALL}),
                    outcomes=frozenset({audit_pb.EVENT_OUTCOME_DENIED}),
                )
            )
            assert [e.api_call.method.rsplit("/", 1)[1] for e in events] == [
                "GetLoginConfiguration",
                "WhoAmI",
            ]
    finally:
        await running.stop(0)
        await opa.stop()


@pytest.mark.asyncio
async def test_malformed_requests_are_refused_clearly(service: Service) -> None:
    admin = await service.session(ADMIN_EMAIL)
    credential = service.running.service_credential.metadata()
    cases: list[tuple[Any, Any, Metadata, str]] = [
        (
            service.policy.EvaluateAccess,
            pb.EvaluateAccessRequest(input=pb.DecisionInput(api_call=pb.ApiCall(method="/x/Y"))),
            credential,
            "is not a method of the service",
        ),
        (
            service.policy.EvaluateAccess,
            pb.EvaluateAccessRequest(input=pb.DecisionInput()),
            credential,
            "say what to decide",
        ),
        (
            service.policy.UpdatePolicy,
            pb.UpdatePolicyRequest(policy=shells(groups=["g"])),
            admin,
            "name the policy to update",
        ),
        (
            service.policy.ListAccessRequests,
            pb.ListAccessRequestsRequest(states=[pb.AccessRequestState.ValueType(9)]),
            admin,
            "is not an access request state",
        ),
        (
            service.policy.GetPolicy,
            pb.GetPolicyRequest(policy_id="x", version=-1),
            admin,
            "version must not be negative",
        ),
    ]
    for call, request, metadata, message in cases:
        details = await refused(call(request, metadata=metadata), grpc.StatusCode.INVALID_ARGUMENT)
        assert message in details
