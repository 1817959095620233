"""The policy role's domain types: policies, decision inputs and decisions.

These are plain frozen dataclasses so the store, the compiler, the engines and the decider never
see protobuf; the servicer converts at the edge. Times are Unix seconds and durations are seconds
(floats), as elsewhere in the project.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = [
    "ActiveAccess",
    "ApiAccess",
    "ApiCall",
    "Decision",
    "Destination",
    "Effect",
    "JustInTimeRules",
    "KubernetesRules",
    "OrganizationControlsRules",
    "Policy",
    "PolicyKind",
    "PolicyRules",
    "Principal",
    "ProxyRules",
    "Reason",
    "RegoRules",
    "RegoTestResult",
    "SessionRecordingRules",
    "SubjectSelector",
    "TargetAccess",
    "TargetConnectRules",
    "TargetSelector",
    "Verb",
    "kind_of",
]


class Verb(enum.Enum):
    """What a grant allows on a target; the numbers are those of `bastion.mrzap.v1.Verb`."""

    SHELL = 1
    EXEC = 2
    FILE_TRANSFER = 3
    TUNNEL = 4
    KUBE = 5


class PolicyKind(enum.Enum):
    """The kinds of policy; the values name them in the Rego data and in YAML."""

    TARGET_CONNECT = "target_connect"
    KUBERNETES = "kubernetes"
    PROXY = "proxy"
    SESSION_RECORDING = "session_recording"
    JUST_IN_TIME = "just_in_time"
    ORGANIZATION_CONTROLS = "organization_controls"
    REGO = "rego"


@dataclasses.dataclass(frozen=True)
class SubjectSelector:
    """Which callers a policy is about; a caller matches if any entry matches."""

    user_emails: tuple[str, ...] = ()
    """Users by verified email address (compared case-insensitively)."""

    groups: tuple[str, ...] = ()
    """Users in any of these identity provider groups."""

    api_key_ids: tuple[str, ...] = ()
    """Service accounts by API key id."""


@dataclasses.dataclass(frozen=True)
class TargetSelector:
    """Which targets a policy is about; a target matches if any entry matches."""

    target_ids: tuple[str, ...] = ()
    """Targets by id."""

    environment_ids: tuple[str, ...] = ()
    """Every target in any of these environments."""


@dataclasses.dataclass(frozen=True)
class Destination:
    """A TCP endpoint as seen from a target."""

    host: str
    """Host name or IP address."""

    port: int
    """TCP port, 1 to 65535."""


@dataclasses.dataclass(frozen=True)
class TargetConnectRules:
    """Shells, commands and file transfers on targets."""

    subjects: SubjectSelector = SubjectSelector()
    targets: TargetSelector = TargetSelector()
    target_users: tuple[str, ...] = ()
    verbs: tuple[Verb, ...] = ()
    """Any of SHELL, EXEC and FILE_TRANSFER."""
    max_session_duration: float = 0.0
    """Seconds; 0 means the organisation's default."""


@dataclasses.dataclass(frozen=True)
class KubernetesRules:
    """Kubernetes access (verb KUBE): the cluster users and groups that may be impersonated."""

    subjects: SubjectSelector = SubjectSelector()
    clusters: TargetSelector = TargetSelector()
    cluster_users: tuple[str, ...] = ()
    cluster_groups: tuple[str, ...] = ()
    max_session_duration: float = 0.0


@dataclasses.dataclass(frozen=True)
class ProxyRules:
    """TCP tunnels (verb TUNNEL) from targets to destinations."""

    subjects: SubjectSelector = SubjectSelector()
    targets: TargetSelector = TargetSelector()
    destinations: tuple[Destination, ...] = ()
    target_users: tuple[str, ...] = ()
    """Users on the destination; empty allows only an empty target user."""
    max_session_duration: float = 0.0


@dataclasses.dataclass(frozen=True)
class SessionRecordingRules:
    """Whose sessions on which targets are recorded; output always, input when asked."""

    subjects: SubjectSelector = SubjectSelector()
    targets: TargetSelector = TargetSelector()
    record_input: bool = False


@dataclasses.dataclass(frozen=True)
class JustInTimeRules:
    """Temporary access to the access of other policies, on request."""

    subjects: SubjectSelector = SubjectSelector()
    """Who may ask."""
    policy_ids: tuple[str, ...] = ()
    """The policies whose access an approved request gives."""
    approvers: SubjectSelector = SubjectSelector()
    auto_approve: bool = False
    max_duration: float = 0.0
    """Seconds; the longest access a request may ask for."""


@dataclasses.dataclass(frozen=True)
class OrganizationControlsRules:
    """Organisation-wide controls; an organisation has at most one such policy."""

    mfa_required: bool = False
    mfa_window: float = 0.0
    """Seconds an MFA verification counts as recent; 0 means any time in the session."""
    max_session_ttl: float = 0.0
    """Seconds; the longest any connection may last; 0 means no limit."""


@dataclasses.dataclass(frozen=True)
class RegoRules:
    """A custom Rego module: its `deny` set denies and its `allow` set allows, with messages."""

    module: str


PolicyRules = (
    TargetConnectRules
    | KubernetesRules
    | ProxyRules
    | SessionRecordingRules
    | JustInTimeRules
    | OrganizationControlsRules
    | RegoRules
)

_KINDS: dict[type[PolicyRules], PolicyKind] = {
    TargetConnectRules: PolicyKind.TARGET_CONNECT,
    KubernetesRules: PolicyKind.KUBERNETES,
    ProxyRules: PolicyKind.PROXY,
    SessionRecordingRules: PolicyKind.SESSION_RECORDING,
    JustInTimeRules: PolicyKind.JUST_IN_TIME,
    OrganizationControlsRules: PolicyKind.ORGANIZATION_CONTROLS,
    RegoRules: PolicyKind.REGO,
}


def kind_of(rules: PolicyRules) -> PolicyKind:
    """The kind of policy `rules` belong to."""
    return _KINDS[type(rules)]


@dataclasses.dataclass(frozen=True)
class Policy:
    """One stored version of a policy."""

    id: str
    name: str
    description: str
    rules: PolicyRules
    version: int
    """1 when created, one more with each update."""
    created_at: float
    updated_at: float

    @property
    def kind(self) -> PolicyKind:
        """The kind of the policy, which follows from its rules."""
        return kind_of(self.rules)


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who makes a request, as the authenticating role established it."""

    user_id: str = ""
    """The service's id of the user; empty for API keys."""
    issuer: str = ""
    subject: str = ""
    email: str = ""
    groups: tuple[str, ...] = ()
    admin: bool = False
    api_key_id: str = ""
    """The API key the call was made with; empty for users."""
    mfa_verified_at: float | None = None
    """When the user last passed MFA in this session; None if never."""


@dataclasses.dataclass(frozen=True)
class TargetAccess:
    """A request to act on a target: the fields a grant would carry."""

    target_id: str
    environment_id: str
    """The target's environment, which the caller looks up in the registry before deciding."""
    verb: Verb
    target_user: str = ""
    """The Unix, database or cluster user to act as."""
    destination: Destination | None = None
    """For tunnels: where the agent connects."""
    kube_groups: tuple[str, ...] = ()
    """For Kubernetes: the groups to impersonate."""


class ApiAccess(enum.Enum):
    """Who may call an RPC, as the servicers classify it (the values of auth's `Access`)."""

    PUBLIC = "public"
    LOGIN = "login"
    REFRESH = "refresh"
    USER = "user"
    ADMIN = "admin"
    AGENT = "agent"


@dataclasses.dataclass(frozen=True)
class ApiCall:
    """A request to call one RPC of the service."""

    method: str
    """The full gRPC method name, e.g. `/bastion.registry.v1.RegistryService/DeleteTarget`."""
    access: ApiAccess


class Effect(enum.Enum):
    """What a decision, or one reason within it, says."""

    ALLOW = "allow"
    DENY = "deny"
    NOT_APPLICABLE = "not_applicable"


@dataclasses.dataclass(frozen=True)
class Reason:
    """One reason for a decision; `message` is human-readable and holds no secret."""

    policy_id: str
    """Empty for built-in rules (such as "MFA is not recent")."""
    policy_name: str
    effect: Effect
    message: str


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of deciding a request."""

    decision_id: str
    allowed: bool
    """Denied unless some policy allows the request and none denies it."""
    reasons: tuple[Reason, ...]
    policy_ids: tuple[str, ...]
    """The policies that allowed the request."""
    max_session_duration: float
    """For target access: the longest the connection may last (seconds); 0 for API calls."""
    record_input: bool
    record_output: bool
    """For target access: what the agent must record (output always, for target access)."""
    decided_at: float


@dataclasses.dataclass(frozen=True)
class ActiveAccess:
    """An approved, unexpired just-in-time access request: its user gets the policies' access."""

    request_id: str
    user_id: str
    email: str
    jit_policy_id: str
    """The just-in-time policy asked under; the decider gives the access of its current
    `policy_ids`, so narrowing or deleting that policy narrows or ends the access at once."""
    expires_at: float


@dataclasses.dataclass(frozen=True)
class RegoTestResult:
    """The outcome of one `test_` rule of a custom Rego module."""

    name: str
    passed: bool
    message: str = ""
