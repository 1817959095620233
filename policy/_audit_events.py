"""The audit events of the policy role: API calls, decisions, and changes to policies and requests.

Each builder returns a `bastion.audit.v1.AuditEvent` for `AuditLog.record`. Events name the
caller (user, subject, API key, network address) and carry the decision's human-readable reasons;
they never carry a bearer token, an API key secret, a grant or a Rego module.
"""

from __future__ import annotations

from collections.abc import Sequence

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.mrzap.v1 import mrzap_pb2

from ._convert import decision_input_message, reason_messages
from ._model import ApiCall, Decision, Effect, Policy, Principal, Reason, TargetAccess

__all__ = ["actor", "api_call_event", "change_event", "decision_event", "policy_change_event"]


def actor(principal: Principal | None, address: str = "") -> audit_pb.Actor:
    """The audit form of who called (an anonymous caller has only an address)."""
    if principal is None:
        return audit_pb.Actor(address=address)
    return audit_pb.Actor(
        user_id=principal.user_id,
        subject=mrzap_pb2.Subject(
            iss=principal.issuer, sub=principal.subject, email=principal.email
        ),
        api_key_id=principal.api_key_id,
        address=address,
    )


def _outcome(allowed: bool) -> audit_pb.EventOutcome.ValueType:
    return audit_pb.EVENT_OUTCOME_ALLOWED if allowed else audit_pb.EVENT_OUTCOME_DENIED


def api_call_event(
    method: str,
    principal: Principal | None,
    address: str,
    *,
    allowed: bool,
    status_code: int,
    reasons: Sequence[Reason],
    decision_id: str = "",
) -> audit_pb.AuditEvent:
    """One RPC, let through or refused by the authorization interceptor."""
    return audit_pb.AuditEvent(
        kind=audit_pb.EVENT_KIND_API_CALL,
        outcome=_outcome(allowed),
        reasons=reason_messages(reasons),
        actor=actor(principal, address),
        api_call=audit_pb.ApiCallDetails(
            method=method, status_code=status_code, decision_id=decision_id
        ),
    )


def decision_event(
    principal: Principal,
    action: TargetAccess | ApiCall,
    decision: Decision,
    address: str = "",
    *,
    grant_id: str = "",
) -> audit_pb.AuditEvent:
    """A decision on a target access request (EvaluateAccess, IssueGrant), with its grant."""
    return audit_pb.AuditEvent(
        kind=audit_pb.EVENT_KIND_POLICY_DECISION,
        outcome=_outcome(decision.allowed),
        reasons=reason_messages(decision.reasons),
        actor=actor(principal, address),
        policy_decision=audit_pb.PolicyDecisionDetails(
            decision_id=decision.decision_id,
            input=decision_input_message(principal, action),
            policy_ids=list(decision.policy_ids),
            grant_id=grant_id,
        ),
    )


def change_event(
    method: str,
    principal: Principal | None,
    address: str,
    message: str,
    *,
    allowed: bool = True,
    policy_id: str = "",
    policy_name: str = "",
) -> audit_pb.AuditEvent:
    """A change (to a policy, an access request, a user's lock) or its refusal, described by
    `message`."""
    reason = Reason(
        policy_id=policy_id,
        policy_name=policy_name,
        effect=Effect.ALLOW if allowed else Effect.DENY,
        message=message,
    )
    return audit_pb.AuditEvent(
        kind=audit_pb.EVENT_KIND_API_CALL,
        outcome=_outcome(allowed),
        reasons=reason_messages([reason]),
        actor=actor(principal, address),
        api_call=audit_pb.ApiCallDetails(method=method),
    )


def policy_change_event(
    method: str, principal: Principal | None, address: str, what: str, policy: Policy
) -> audit_pb.AuditEvent:
    """`policy` was `what` ("created", "updated", "deleted") by `principal` (None: the service)."""
    return change_event(
        method,
        principal,
        address,
        f"{what} {policy.kind.value} policy {policy.name!r} ({policy.id}) version {policy.version}",
        policy_id=policy.id,
        policy_name=policy.name,
    )
