"""Grants and revocations through the running service: signed only for allowed requests, exactly as
decided (PROTOCOL.md section 4), audited; and a broker process without the grant key gets them
from the policy role over gRPC with the service credential."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import grpc
import pytest

from audit import EventQuery
from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as pb
from mrzap import keys
from mrzap.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from mrzap.grant import verify_grant
from mrzap.revocation import verify_revocation
from policy._model import Principal, SubjectSelector, TargetConnectRules, TargetSelector, Verb
from registry import Target

from ._rpc import refused
from .conftest import Service

ALICE = Principal(
    user_id="u-alice",
    issuer="https://idp.example.com",
    subject="alice-sub",
    email="alice@example.com",
    mfa_verified_at=time.time(),
)
UPK = keys.public_key_bytes(keys.generate_signing_key())


async def allow_alice_shells(service: Service, target: Target) -> str:
    policy = await service.running.policies.create(
        "alice shells",
        "",
        TargetConnectRules(
            subjects=SubjectSelector(user_emails=("alice@example.com",)),
            targets=TargetSelector(environment_ids=(target.environment_id,)),
            target_users=("alice",),
            verbs=(Verb.SHELL,),
            max_session_duration=1800,
        ),
        time.time(),
    )
    await service.running.decider.reload()
    return policy.id


def shell(target: Target, user: str = "alice") -> pb.TargetAccess:
    return pb.TargetAccess(target_id=target.id, verb=mrzap_pb2.VERB_SHELL, target_user=user)


def service_keys(service: Service) -> dict[str, object]:
    return {
        key.key_id: keys.public_key_from_bytes(key.public_key)
        for key in service.running.grant_keys.public_keys
    }


async def decision_events(service: Service) -> list[audit_pb.AuditEvent]:
    events, _ = await service.running.audit.list_events(
        EventQuery(kinds=frozenset({audit_pb.EVENT_KIND_POLICY_DECISION}))
    )
    return events


@pytest.mark.asyncio
async def test_an_allowed_request_gets_a_grant_for_exactly_what_was_decided(
    service: Service,
) -> None:
    target = await service.target()
    policy_id = await allow_alice_shells(service, target)
    issued = await service.running.grants.issue_grant(ALICE, shell(target), UPK, "ipv4:x")
    assert issued.decision.allowed
    assert issued.grant is not None
    grant = verify_grant(
        issued.grant,
        service_keys(service),  # type: ignore[arg-type]
        target_id=target.id,
        now=time.time(),
    )
    assert grant.grant_id == issued.grant_id
    assert grant.org_id == await service.running.registry.org_id()
    assert (grant.subject.iss, grant.subject.sub) == (ALICE.issuer, ALICE.subject)
    assert grant.upk == UPK
    assert grant.target_public_key == target.public_key
    assert (grant.verb, grant.target_user) == (mrzap_pb2.VERB_SHELL, "alice")
    assert grant.start_by.seconds - grant.not_before.seconds == 60
    assert grant.session_expires_at.seconds - grant.not_before.seconds == 1800
    assert grant.record.output
    assert list(grant.policy_ids) == [policy_id]
    [event] = await decision_events(service)
    assert event.outcome == audit_pb.EVENT_OUTCOME_ALLOWED
    assert event.policy_decision.grant_id == issued.grant_id
    assert event.policy_decision.decision_id == issued.decision.decision_id
    assert event.policy_decision.input.target_access.target_id == target.id


@pytest.mark.asyncio
async def test_a_denied_request_gets_no_grant_and_is_audited(service: Service) -> None:
    target = await service.target()
    await allow_alice_shells(service, target)
    issued = await service.running.grants.issue_grant(ALICE, shell(target, "root"), UPK)
    assert not issued.decision.allowed
    assert issued.grant is None
    assert issued.decision.reasons
    [event] = await decision_events(service)
    assert event.outcome == audit_pb.EVENT_OUTCOME_DENIED
    assert event.policy_decision.grant_id == ""


@pytest.mark.asyncio
async def test_grant_requests_that_cannot_be_granted_are_refused(service: Service) -> None:
    target = await service.target()
    await allow_alice_shells(service, target)
    grants = service.running.grants
    with pytest.raises(PermissionDenied, match="API keys"):
        await grants.issue_grant(Principal(api_key_id="mzk_1", admin=True), shell(target), UPK)
    with pytest.raises(InvalidArgument, match="32-byte"):
        await grants.issue_grant(ALICE, shell(target), UPK[:31])
    with pytest.raises(InvalidArgument):
        await grants.issue_grant(
            ALICE, pb.TargetAccess(target_id=target.id, target_user="alice"), UPK
        )
    issued = await service.running.registry.create_activation_token(
        registration_key=(await service.running.registry.create_registration_key("k")).secret
    )
    with pytest.raises(FailedPrecondition, match="has not registered"):
        await grants.issue_grant(ALICE, shell(issued.target), UPK)


@pytest.mark.asyncio
async def test_revocations_are_signed_with_the_grant_key(service: Service) -> None:
    subject = mrzap_pb2.Subject(iss="https://idp", sub="alice-sub", email="alice@example.com")
    signed = await service.running.grants.issue_revocation(["g-1"], [subject])
    revocation = verify_revocation(signed, service_keys(service))  # type: ignore[arg-type]
    assert list(revocation.grant_ids) == ["g-1"]
    assert revocation.subjects[0].sub == "alice-sub"
    with pytest.raises(InvalidArgument):
        await service.running.grants.issue_revocation([], [])


@pytest.mark.asyncio
async def test_only_service_roles_may_ask_for_grants_and_revocations(service: Service) -> None:
    target = await service.target()
    await allow_alice_shells(service, target)
    request = pb.IssueGrantRequest(access=shell(target), upk=UPK)
    request.principal.user_id = ALICE.user_id
    admin = await service.session("admin@example.com")
    for metadata in ((), admin, (("mrzap-service-credential", "x" * 43),)):
        await refused(
            service.policy.IssueGrant(request, metadata=metadata),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await refused(
            service.policy.IssueRevocation(
                pb.IssueRevocationRequest(grant_ids=["g"]), metadata=metadata
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    assert await decision_events(service) == []


_BROKER = """
import asyncio, json, sys
from pathlib import Path

import grpc

from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as pb
from policy import RemoteGrantIssuer, ServiceCredential
from policy._model import Principal


async def main(port, ca_file, data_dir, target_id, user, principal):
    credential = ServiceCredential.load_or_create(Path(data_dir))
    tls = grpc.ssl_channel_credentials(Path(ca_file).read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", tls) as channel:
        issuer = RemoteGrantIssuer(channel, credential.metadata())
        access = pb.TargetAccess(target_id=target_id, verb=mrzap_pb2.VERB_SHELL, target_user=user)
        issued = await issuer.issue_grant(Principal(**principal), access, bytes(32))
        revocation = await issuer.issue_revocation([issued.grant_id or "none"], [])
    print(json.dumps({
        "allowed": issued.decision.allowed,
        "reasons": [r.message for r in issued.decision.reasons],
        "grant": issued.grant.SerializeToString().hex() if issued.grant else "",
        "revocation": revocation.SerializeToString().hex(),
    }))


asyncio.run(main(*sys.argv[1:6], json.loads(sys.argv[6])))
"""


async def run_broker(
    service: Service, data_dir: Path, target: Target, user: str
) -> dict[str, object]:
    """A broker process that holds the service credential but no grant key."""
    principal = dataclasses.asdict(ALICE)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BROKER,
        str(service.running.port),
        str(service.running.tls.ca_cert),
        str(data_dir),
        target.id,
        user,
        json.dumps(principal),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.asyncio
async def test_a_broker_without_the_grant_key_gets_grants_from_the_policy_role(
    service: Service, tmp_path: Path
) -> None:
    target = await service.target()
    await allow_alice_shells(service, target)
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir(mode=0o700)
    # The operator copies the service credential, and nothing else, to the broker's host.
    shutil.copy2(
        tmp_path / "service" / "service-credential",
        broker_dir / "service-credential",
    )
    allowed = await run_broker(service, broker_dir, target, "alice")
    assert not list(broker_dir.rglob("grant-*.key"))
    assert allowed["allowed"] is True
    signed = mrzap_pb2.Signed.FromString(bytes.fromhex(str(allowed["grant"])))
    grant = verify_grant(
        signed,
        service_keys(service),  # type: ignore[arg-type]
        target_id=target.id,
        now=time.time(),
    )
    assert grant.target_user == "alice"
    revocation = mrzap_pb2.Signed.FromString(bytes.fromhex(str(allowed["revocation"])))
    verify_revocation(revocation, service_keys(service))  # type: ignore[arg-type]
    denied = await run_broker(service, broker_dir, target, "root")
    assert denied["allowed"] is False
    assert denied["grant"] == ""
    assert denied["reasons"]
    # Without the credential the broker gets nothing.
    (broker_dir / "service-credential").write_text("y" * 43)
    with pytest.raises(AssertionError, match="only the service's own roles"):
        await run_broker(service, broker_dir, target, "alice")
