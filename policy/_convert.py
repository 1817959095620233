"""Conversions between the policy contract's messages and the role's domain dataclasses.

Protobuf stops here: the servicer, the interceptor and the grant issuer convert with these
functions, and the store, the compiler, the engines and the decider never see a message. Input
from the wire is checked as it is converted (an unset oneof, an unknown verb or effect), so the
domain gets only values it can trust the types of.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.duration_pb2 import Duration

from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as pb
from mrzap.errors import InvalidArgument
from mrzap.timestamps import from_duration, from_timestamp, to_duration, to_timestamp

from ._access_request_store import AccessRequest
from ._model import (
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
    Reason,
    RegoRules,
    RegoTestResult,
    SessionRecordingRules,
    SubjectSelector,
    TargetAccess,
    TargetConnectRules,
    TargetSelector,
    Verb,
    kind_of,
)

__all__ = [
    "access_request_message",
    "decision_from_message",
    "decision_input_message",
    "decision_message",
    "policy_message",
    "principal_from_message",
    "principal_message",
    "reason_messages",
    "rego_test_result_message",
    "rules_from_message",
    "seconds",
    "target_access_from_message",
    "target_access_message",
    "verb_from_number",
]

_EFFECTS = {
    Effect.ALLOW: pb.DECISION_EFFECT_ALLOW,
    Effect.DENY: pb.DECISION_EFFECT_DENY,
    Effect.NOT_APPLICABLE: pb.DECISION_EFFECT_UNSPECIFIED,
}


def _optional_duration(value_s: float) -> Duration | None:
    """A Duration, or None (the field stays unset) for 0, which means "not set" in policies."""
    return to_duration(value_s) if value_s else None


def seconds(message: Duration, name: str) -> float:
    """Seconds of a Duration; InvalidArgument for a negative one."""
    value = from_duration(message)
    if value < 0:
        raise InvalidArgument(f"{name} must not be negative")
    return value


def verb_from_number(number: int) -> Verb:
    """The verb of a `bastion.mrzap.v1.Verb` number; InvalidArgument for unset or unknown."""
    try:
        return Verb(number)
    except ValueError:
        raise InvalidArgument(
            f"{number} is not a verb: use SHELL, EXEC, FILE_TRANSFER, TUNNEL or KUBE"
        ) from None


# Policies.


def _subjects(message: pb.SubjectSelector) -> SubjectSelector:
    return SubjectSelector(
        user_emails=tuple(message.user_emails),
        groups=tuple(message.groups),
        api_key_ids=tuple(message.api_key_ids),
    )


def _subjects_message(selector: SubjectSelector) -> pb.SubjectSelector | None:
    # Empty selectors stay unset, so a stored policy reads back as a client that left them out
    # wrote it.
    if selector == SubjectSelector():
        return None
    return pb.SubjectSelector(
        user_emails=list(selector.user_emails),
        groups=list(selector.groups),
        api_key_ids=list(selector.api_key_ids),
    )


def _targets(message: pb.TargetSelector) -> TargetSelector:
    return TargetSelector(
        target_ids=tuple(message.target_ids), environment_ids=tuple(message.environment_ids)
    )


def _targets_message(selector: TargetSelector) -> pb.TargetSelector | None:
    if selector == TargetSelector():
        return None
    return pb.TargetSelector(
        target_ids=list(selector.target_ids), environment_ids=list(selector.environment_ids)
    )


def _destination(message: mrzap_pb2.Destination) -> Destination:
    return Destination(host=message.host, port=message.port)


def _destination_message(destination: Destination) -> mrzap_pb2.Destination:
    return mrzap_pb2.Destination(host=destination.host, port=destination.port)


def rules_from_message(policy: pb.Policy) -> PolicyRules:
    """The rules of a policy message; InvalidArgument when it has no kind."""
    kind = policy.WhichOneof("spec")
    if kind == "target_connect":
        tc = policy.target_connect
        return TargetConnectRules(
            subjects=_subjects(tc.subjects),
            targets=_targets(tc.targets),
            target_users=tuple(tc.target_users),
            verbs=tuple(verb_from_number(v) for v in tc.verbs),
            max_session_duration=seconds(tc.max_session_duration, "max_session_duration"),
        )
    if kind == "kubernetes":
        kube = policy.kubernetes
        return KubernetesRules(
            subjects=_subjects(kube.subjects),
            clusters=_targets(kube.clusters),
            cluster_users=tuple(kube.cluster_users),
            cluster_groups=tuple(kube.cluster_groups),
            max_session_duration=seconds(kube.max_session_duration, "max_session_duration"),
        )
    if kind == "proxy":
        proxy = policy.proxy
        return ProxyRules(
            subjects=_subjects(proxy.subjects),
            targets=_targets(proxy.targets),
            destinations=tuple(_destination(d) for d in proxy.destinations),
            target_users=tuple(proxy.target_users),
            max_session_duration=seconds(proxy.max_session_duration, "max_session_duration"),
        )
    if kind == "session_recording":
        recording = policy.session_recording
        return SessionRecordingRules(
            subjects=_subjects(recording.subjects),
            targets=_targets(recording.targets),
            record_input=recording.record_input,
        )
    if kind == "just_in_time":
        jit = policy.just_in_time
        return JustInTimeRules(
            subjects=_subjects(jit.subjects),
            policy_ids=tuple(jit.policy_ids),
            approvers=_subjects(jit.approvers),
            auto_approve=jit.auto_approve,
            max_duration=seconds(jit.max_duration, "max_duration"),
        )
    if kind == "organization_controls":
        controls = policy.organization_controls
        return OrganizationControlsRules(
            mfa_required=controls.mfa_required,
            mfa_window=seconds(controls.mfa_window, "mfa_window"),
            max_session_ttl=seconds(controls.max_session_ttl, "max_session_ttl"),
        )
    if kind == "rego":
        return RegoRules(module=policy.rego.module)
    raise InvalidArgument(
        "the policy has no kind: set one of target_connect, kubernetes, proxy, "
        "session_recording, just_in_time, organization_controls or rego"
    )


def policy_message(policy: Policy) -> pb.Policy:
    """The wire form of a stored policy version."""
    message = pb.Policy(
        id=policy.id,
        name=policy.name,
        description=policy.description,
        create_time=to_timestamp(policy.created_at),
        update_time=to_timestamp(policy.updated_at),
        version=policy.version,
    )
    rules = policy.rules
    if isinstance(rules, TargetConnectRules):
        message.target_connect.CopyFrom(
            pb.TargetConnectPolicy(
                subjects=_subjects_message(rules.subjects),
                targets=_targets_message(rules.targets),
                target_users=list(rules.target_users),
                verbs=[mrzap_pb2.Verb.ValueType(v.value) for v in rules.verbs],
                max_session_duration=_optional_duration(rules.max_session_duration),
            )
        )
    elif isinstance(rules, KubernetesRules):
        message.kubernetes.CopyFrom(
            pb.KubernetesPolicy(
                subjects=_subjects_message(rules.subjects),
                clusters=_targets_message(rules.clusters),
                cluster_users=list(rules.cluster_users),
                cluster_groups=list(rules.cluster_groups),
                max_session_duration=_optional_duration(rules.max_session_duration),
            )
        )
    elif isinstance(rules, ProxyRules):
        message.proxy.CopyFrom(
            pb.ProxyPolicy(
                subjects=_subjects_message(rules.subjects),
                targets=_targets_message(rules.targets),
                destinations=[_destination_message(d) for d in rules.destinations],
                target_users=list(rules.target_users),
                max_session_duration=_optional_duration(rules.max_session_duration),
            )
        )
    elif isinstance(rules, SessionRecordingRules):
        message.session_recording.CopyFrom(
            pb.SessionRecordingPolicy(
                subjects=_subjects_message(rules.subjects),
                targets=_targets_message(rules.targets),
                record_input=rules.record_input,
            )
        )
    elif isinstance(rules, JustInTimeRules):
        message.just_in_time.CopyFrom(
            pb.JustInTimePolicy(
                subjects=_subjects_message(rules.subjects),
                policy_ids=list(rules.policy_ids),
                approvers=_subjects_message(rules.approvers),
                auto_approve=rules.auto_approve,
                max_duration=_optional_duration(rules.max_duration),
            )
        )
    elif isinstance(rules, OrganizationControlsRules):
        message.organization_controls.CopyFrom(
            pb.OrganizationControlsPolicy(
                mfa_required=rules.mfa_required,
                mfa_window=_optional_duration(rules.mfa_window),
                max_session_ttl=_optional_duration(rules.max_session_ttl),
            )
        )
    else:
        message.rego.CopyFrom(pb.RegoPolicy(module=rules.module))
    assert message.WhichOneof("spec") == kind_of(rules).value
    return message


# Decision inputs.


def principal_from_message(message: pb.Principal) -> Principal:
    """The principal a trusted role vouches for."""
    return Principal(
        user_id=message.user_id,
        issuer=message.subject.iss,
        subject=message.subject.sub,
        email=message.subject.email.lower(),
        groups=tuple(message.groups),
        admin=message.admin,
        api_key_id=message.api_key_id,
        mfa_verified_at=(
            from_timestamp(message.mfa_verify_time) if message.HasField("mfa_verify_time") else None
        ),
    )


def principal_message(principal: Principal) -> pb.Principal:
    """The wire form of a principal."""
    message = pb.Principal(
        user_id=principal.user_id,
        subject=mrzap_pb2.Subject(
            iss=principal.issuer, sub=principal.subject, email=principal.email
        ),
        groups=list(principal.groups),
        admin=principal.admin,
        api_key_id=principal.api_key_id,
    )
    if principal.mfa_verified_at is not None:
        message.mfa_verify_time.CopyFrom(to_timestamp(principal.mfa_verified_at))
    return message


def target_access_from_message(message: pb.TargetAccess, environment_id: str) -> TargetAccess:
    """A target access request; `environment_id` is the target's, from the registry."""
    if not message.target_id:
        raise InvalidArgument("name the target (target_id)")
    verb = verb_from_number(message.verb)
    destination = None
    if message.HasField("destination"):
        if not message.destination.host or not 0 < message.destination.port <= 65535:
            raise InvalidArgument("a destination needs a host and a port within 1-65535")
        destination = _destination(message.destination)
    return TargetAccess(
        target_id=message.target_id,
        environment_id=environment_id,
        verb=verb,
        target_user=message.target_user,
        destination=destination,
        kube_groups=tuple(message.kube_groups),
    )


def target_access_message(access: TargetAccess) -> pb.TargetAccess:
    """The wire form of a target access request."""
    message = pb.TargetAccess(
        target_id=access.target_id,
        verb=mrzap_pb2.Verb.ValueType(access.verb.value),
        target_user=access.target_user,
        kube_groups=list(access.kube_groups),
    )
    if access.destination is not None:
        message.destination.CopyFrom(_destination_message(access.destination))
    return message


def decision_input_message(
    principal: Principal, action: TargetAccess | ApiCall
) -> pb.DecisionInput:
    """What a decision was made from, as audit events record it."""
    message = pb.DecisionInput(principal=principal_message(principal))
    if isinstance(action, ApiCall):
        message.api_call.method = action.method
    else:
        message.target_access.CopyFrom(target_access_message(action))
    return message


# Decisions and their by-products.


def reason_messages(reasons: Sequence[Reason]) -> list[pb.DecisionReason]:
    """The wire form of decision reasons."""
    return [
        pb.DecisionReason(
            policy_id=reason.policy_id,
            policy_name=reason.policy_name,
            effect=_EFFECTS[reason.effect],
            message=reason.message,
        )
        for reason in reasons
    ]


def decision_message(decision: Decision) -> pb.Decision:
    """The wire form of a decision."""
    message = pb.Decision(
        decision_id=decision.decision_id,
        effect=pb.DECISION_EFFECT_ALLOW if decision.allowed else pb.DECISION_EFFECT_DENY,
        reasons=reason_messages(decision.reasons),
        policy_ids=list(decision.policy_ids),
        record=mrzap_pb2.RecordSettings(output=decision.record_output, input=decision.record_input),
        decide_time=to_timestamp(decision.decided_at),
    )
    if decision.max_session_duration > 0:
        message.max_session_duration.CopyFrom(to_duration(decision.max_session_duration))
    return message


def decision_from_message(message: pb.Decision) -> Decision:
    """A decision as another role returned it."""
    effects = {number: effect for effect, number in _EFFECTS.items()}
    return Decision(
        decision_id=message.decision_id,
        allowed=message.effect == pb.DECISION_EFFECT_ALLOW,
        reasons=tuple(
            Reason(
                policy_id=reason.policy_id,
                policy_name=reason.policy_name,
                effect=effects.get(reason.effect, Effect.NOT_APPLICABLE),
                message=reason.message,
            )
            for reason in message.reasons
        ),
        policy_ids=tuple(message.policy_ids),
        max_session_duration=(
            seconds(message.max_session_duration, "max_session_duration")
            if message.HasField("max_session_duration")
            else 0.0
        ),
        record_input=message.record.input,
        record_output=message.record.output,
        decided_at=from_timestamp(message.decide_time),
    )


def rego_test_result_message(result: RegoTestResult) -> pb.RegoTestResult:
    """The wire form of one Rego test's outcome."""
    return pb.RegoTestResult(name=result.name, passed=result.passed, message=result.message)


def access_request_message(request: AccessRequest) -> pb.AccessRequest:
    """The wire form of a just-in-time access request."""
    message = pb.AccessRequest(
        id=request.id,
        policy_id=request.policy_id,
        requester_user_id=request.requester_user_id,
        requester_email=request.requester_email,
        reason=request.reason,
        duration=to_duration(request.duration_s),
        state=pb.AccessRequestState.ValueType(request.state.value),
        create_time=to_timestamp(request.created_at),
        decider_email=request.decider_email,
        decision_comment=request.decision_comment,
    )
    if request.decided_at is not None:
        message.decide_time.CopyFrom(to_timestamp(request.decided_at))
    if request.expires_at is not None:
        message.expire_time.CopyFrom(to_timestamp(request.expires_at))
    return message
