"""Policies to Rego: the data document, the module set, and the decision input.

Typed policies become plain data shaped for the shipped module (policy/rego/authz.rego):
selectors become sets (JSON objects of `true`) so a check is one lookup. Indexes by target,
environment and subject pick, for each request, the few policies that can bear on it; they travel
in the input as its `scope` (why: see authz.rego), and organisation-wide settings are loaded as
`data.mrzap_data`. Custom Rego modules are loaded as they are, each in its own package under
`mrzap.custom`, and a generated module (`mrzap.customs`) gathers their `deny` and `allow` sets with
the policy each came from.

Times and durations are numbers in the data and the input, with preformatted text beside them for
messages, because the two engines do not agree on Rego's time functions.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

from mrzap.errors import InvalidArgument

from ._model import (
    ActiveAccess,
    ApiCall,
    Destination,
    JustInTimeRules,
    KubernetesRules,
    OrganizationControlsRules,
    Policy,
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

__all__ = [
    "DECISION_QUERY",
    "DEFAULT_SESSION_DURATION",
    "Bundle",
    "CompiledPolicies",
    "checking_bundle",
    "custom_package",
    "decision_input",
    "format_duration",
    "format_time",
    "glue_module",
    "rename_package",
]

#: The document every engine evaluates for a decision.
DECISION_QUERY = "data.mrzap.authz.decision"

#: How long a connection may last when no policy says (seconds): a working day.
DEFAULT_SESSION_DURATION = 8 * 3600.0

#: The package prefix of custom Rego; one package per policy keeps policies from merging rules.
CUSTOM_PACKAGE_PREFIX = "mrzap.custom."

_CUSTOM_PACKAGE = re.compile(r"^package\s+mrzap\.custom\.([A-Za-z_][A-Za-z0-9_]*)\s*(#.*)?$")
_PACKAGE_LINE = re.compile(r"^package\s")


@dataclasses.dataclass(frozen=True)
class Bundle:
    """Everything an engine loads: Rego modules by file name, and the data document."""

    modules: Mapping[str, str]
    data: Mapping[str, Any]


def shipped_modules() -> dict[str, str]:
    """The Rego modules shipped with the service, by file name."""
    folder = resources.files("policy") / "rego"
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".rego")
    }


def custom_package(module: str) -> str:
    """The package of a custom module (`mrzap.custom.NAME`); InvalidArgument if it has another.

    The package clause must be the module's first statement, so only blank lines and comments
    may come before it.
    """
    for raw in module.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _CUSTOM_PACKAGE.match(line)
        if match is not None:
            return CUSTOM_PACKAGE_PREFIX + match.group(1)
        if _PACKAGE_LINE.match(line):
            raise InvalidArgument(
                f"custom Rego must be in a package of its own under mrzap.custom, such as "
                f"`package mrzap.custom.contractors`; this module has `{line}`"
            )
        break
    raise InvalidArgument(
        "custom Rego must start with a package clause under mrzap.custom, such as "
        "`package mrzap.custom.contractors`"
    )


def format_duration(seconds: float) -> str:
    """A duration for people: `8 h`, `1 h 30 min`, `45 s`."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{value} {unit}" for value, unit in ((hours, "h"), (minutes, "min"), (secs, "s")) if value
    ]
    return " ".join(parts) or "0 s"


def format_time(when: float) -> str:
    """A UTC time for people and logs (RFC 3339, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


@dataclasses.dataclass(frozen=True)
class _Subjects:
    emails: frozenset[str]
    groups: frozenset[str]
    api_keys: frozenset[str]

    @classmethod
    def of(cls, selector: SubjectSelector) -> _Subjects:
        return cls(
            frozenset(email.lower() for email in selector.user_emails),
            frozenset(selector.groups),
            frozenset(selector.api_key_ids),
        )

    def matches(self, principal: Principal) -> bool:
        return bool(self.project(principal))

    def project(self, principal: Principal) -> dict[str, Any]:
        """The sets cut down to the principal's keys (empty sets left out)."""
        return _sets(
            emails=_cut(self.emails, (principal.email.lower(),)),
            groups=_cut(self.groups, principal.groups),
            api_keys=_cut(self.api_keys, (principal.api_key_id,) if principal.api_key_id else ()),
        )


@dataclasses.dataclass(frozen=True)
class _AccessPolicy:
    """A policy that covers targets, compiled: every selector a set."""

    kind: str
    subjects: _Subjects
    target_ids: frozenset[str]
    environment_ids: frozenset[str]
    target_users: frozenset[str] = frozenset()
    verbs: frozenset[str] = frozenset()
    destinations: frozenset[str] = frozenset()
    cluster_users: frozenset[str] = frozenset()
    cluster_groups: frozenset[str] = frozenset()
    max_session_duration: float = 0.0
    record_input: bool = False

    def project(
        self, policy_id: str, name: str, principal: Principal, access: TargetAccess
    ) -> dict[str, Any]:
        """The policy as authz.rego sees it for this request.

        Each set keeps only the members the request could look up, so every membership test in
        the module has the same answer as on the whole set, and the input stays small.
        """
        document: dict[str, Any] = {"id": policy_id, "name": name, "kind": self.kind}
        # Zero and false are left out (the module reads them with defaults): every value in the
        # input costs the embedded engine time.
        if self.max_session_duration:
            document["max_session_duration"] = self.max_session_duration
        if self.record_input:
            document["record_input"] = True
        if self.kind == "proxy":
            document["target_user_count"] = len(self.target_users)
        subjects = self.subjects.project(principal)
        if subjects:
            document["subjects"] = subjects
        targets = _sets(
            ids=_cut(self.target_ids, (access.target_id,)),
            environments=_cut(self.environment_ids, (access.environment_id,)),
        )
        if targets:
            document["targets"] = targets
        destination = _destination_key(access.destination) if access.destination else ""
        document |= _sets(
            target_users=_cut(self.target_users, (access.target_user,)),
            verbs=_cut(self.verbs, (_verb_name(access.verb),)),
            destinations=_cut(self.destinations, (destination,)),
            cluster_users=_cut(self.cluster_users, (access.target_user,)),
            cluster_groups=_cut(self.cluster_groups, access.kube_groups),
        )
        return document


def _cut(members: frozenset[str], keys: Iterable[str]) -> dict[str, bool]:
    """`members` cut down to `keys`, as a Rego set (an object of `true`)."""
    return {key: True for key in keys if key in members}


def _sets(**sets: dict[str, bool]) -> dict[str, Any]:
    return {name: members for name, members in sets.items() if members}


def _verb_name(verb: Verb) -> str:
    return f"VERB_{verb.name}"


def _destination_key(destination: Destination) -> str:
    return f"{destination.host.lower()}:{destination.port}"


def _access_policy(policy: Policy) -> tuple[_AccessPolicy, TargetSelector] | None:
    """The compiled form of a policy that covers targets, and its target selector."""
    rules = policy.rules
    kind = policy.kind.value
    if isinstance(rules, TargetConnectRules):
        compiled = _AccessPolicy(
            kind,
            _Subjects.of(rules.subjects),
            frozenset(rules.targets.target_ids),
            frozenset(rules.targets.environment_ids),
            target_users=frozenset(rules.target_users),
            verbs=frozenset(_verb_name(verb) for verb in rules.verbs),
            max_session_duration=rules.max_session_duration,
        )
        return compiled, rules.targets
    if isinstance(rules, KubernetesRules):
        compiled = _AccessPolicy(
            kind,
            _Subjects.of(rules.subjects),
            frozenset(rules.clusters.target_ids),
            frozenset(rules.clusters.environment_ids),
            cluster_users=frozenset(rules.cluster_users),
            cluster_groups=frozenset(rules.cluster_groups),
            max_session_duration=rules.max_session_duration,
        )
        return compiled, rules.clusters
    if isinstance(rules, ProxyRules):
        compiled = _AccessPolicy(
            kind,
            _Subjects.of(rules.subjects),
            frozenset(rules.targets.target_ids),
            frozenset(rules.targets.environment_ids),
            target_users=frozenset(rules.target_users),
            destinations=frozenset(_destination_key(d) for d in rules.destinations),
            max_session_duration=rules.max_session_duration,
        )
        return compiled, rules.targets
    if isinstance(rules, SessionRecordingRules):
        compiled = _AccessPolicy(
            kind,
            _Subjects.of(rules.subjects),
            frozenset(rules.targets.target_ids),
            frozenset(rules.targets.environment_ids),
            record_input=rules.record_input,
        )
        return compiled, rules.targets
    return None


def rename_package(module: str, package: str) -> str:
    """The module with its package clause (checked by `custom_package`) replaced."""
    lines = module.splitlines(keepends=True)
    for index, raw in enumerate(lines):
        if _CUSTOM_PACKAGE.match(raw.strip()):
            lines[index] = f"package {package}\n"
            break
    return "".join(lines)


def checking_bundle(module: str, package: str) -> Bundle:
    """A bundle with the shipped modules and one custom module, to compile it as it would run."""
    modules = shipped_modules()
    modules["mrzap_customs.rego"] = glue_module([("", "", package)])
    modules["custom_check.rego"] = module
    data = {"mrzap_data": {"org": {}, "default_session_duration": DEFAULT_SESSION_DURATION}}
    return Bundle(modules, data)


def glue_module(custom: Sequence[tuple[str, str, str]], package: str = "mrzap.customs") -> str:
    """The module that gathers every custom policy's `deny` and `allow` messages.

    `custom` holds (policy id, policy name, package) triples. The rules are sets of messages
    (a message that is not a string is shown as Rego prints it).
    Policy ids and names are JSON string literals, which Rego reads as they are.
    """
    lines = [
        "# Generated: gathers the custom policies' deny and allow sets. Do not edit.",
        f"package {package}",
        "",
        "import rego.v1",
        "",
        'message(m) := m if is_string(m) else := sprintf("%v", [m])',
    ]
    for index, (policy_id, policy_name, source_package) in enumerate(custom):
        ref = "data." + source_package
        origin = f'"policy_id": {json.dumps(policy_id)}, "policy_name": {json.dumps(policy_name)}'
        for rule in ("deny", "allow"):
            lines += [
                "",
                f'{rule} contains {{{origin}, "message": message(m)}} if {{',
                f"\tsome m in {ref}.{rule}",
                "}",
            ]
        # Explanations name the custom policies that had nothing to say, too.
        lines += [
            "",
            f"silent contains {{{origin}}} if not said_{index}",
            "",
            f"said_{index} if some _ in {ref}.deny",
            "",
            f"said_{index} if some _ in {ref}.allow",
        ]
    if not custom:
        lines += ["", "deny := set()", "", "allow := set()", "", "silent := set()"]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class _JustInTime:
    subjects: _Subjects
    policy_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Grant:
    """An approved just-in-time request, as it gives one policy's access."""

    request_id: str
    expires_at: float

    def document(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "expires_at": self.expires_at,
            "until": format_time(self.expires_at),
        }


_KIND_OF_VERB = {
    Verb.SHELL: "target_connect",
    Verb.EXEC: "target_connect",
    Verb.FILE_TRANSFER: "target_connect",
    Verb.TUNNEL: "proxy",
    Verb.KUBE: "kubernetes",
}


class CompiledPolicies:
    """The policies compiled for an engine: the bundle it loads, and each request's scope.

    The scope is the part of the compiled policies that can bear on one request (see the comment
    at the top of authz.rego), found here through dictionaries in constant time.
    """

    def __init__(
        self,
        policies: Sequence[Policy],
        active_access: Sequence[ActiveAccess] = (),
        *,
        default_session_duration: float = DEFAULT_SESSION_DURATION,
    ) -> None:
        self._policies: dict[str, _AccessPolicy] = {}
        self._names: dict[str, str] = {}
        self._by_target: dict[str, list[str]] = {}
        self._by_environment: dict[str, list[str]] = {}
        self._by_subject: dict[tuple[str, str], list[str]] = {}
        self._jit_policies: dict[str, _JustInTime] = {}
        org: dict[str, Any] = {}
        custom: list[tuple[Policy, str]] = []
        for policy in policies:
            self._names[policy.id] = policy.name
            rules = policy.rules
            compiled = _access_policy(policy)
            if compiled is not None:
                self._add_access_policy(policy.id, *compiled)
            elif isinstance(rules, JustInTimeRules):
                self._jit_policies[policy.id] = _JustInTime(
                    _Subjects.of(rules.subjects), rules.policy_ids
                )
            elif isinstance(rules, OrganizationControlsRules):
                org = _organization_controls(policy, rules)
            elif isinstance(rules, RegoRules):
                try:
                    custom.append((policy, custom_package(rules.module)))
                except InvalidArgument:
                    # Checked before it was stored; a module that no longer passes is left out
                    # rather than loaded into another package.
                    continue
        self._grants = self._index_grants(active_access)
        modules = shipped_modules()
        modules["mrzap_customs.rego"] = glue_module(
            [(policy.id, policy.name, package) for policy, package in custom]
        )
        for policy, _package in custom:
            assert isinstance(policy.rules, RegoRules)
            modules[f"custom_{policy.id}.rego"] = policy.rules.module
        data = {"mrzap_data": {"org": org, "default_session_duration": default_session_duration}}
        self.bundle = Bundle(modules, data)
        """What the engine loads: the shipped, generated and custom modules, and the data."""

    def _add_access_policy(
        self, policy_id: str, compiled: _AccessPolicy, targets: TargetSelector
    ) -> None:
        self._policies[policy_id] = compiled
        for target_id in dict.fromkeys(targets.target_ids):
            self._by_target.setdefault(target_id, []).append(policy_id)
        for environment_id in dict.fromkeys(targets.environment_ids):
            self._by_environment.setdefault(environment_id, []).append(policy_id)
        subjects = compiled.subjects
        for kind, values in (
            ("email", subjects.emails),
            ("group", subjects.groups),
            ("api_key", subjects.api_keys),
        ):
            for value in values:
                self._by_subject.setdefault((kind, value), []).append(policy_id)

    def _index_grants(self, active_access: Sequence[ActiveAccess]) -> dict[str, dict[str, _Grant]]:
        """Per user, per policy given: the latest-ending approved request.

        The access is that of the just-in-time policy's current children, so narrowing or
        deleting the just-in-time policy narrows or ends it; only policies that cover targets
        can be given.
        """
        by_user: dict[str, dict[str, _Grant]] = {}
        for access in active_access:
            jit = self._jit_policies.get(access.jit_policy_id)
            if jit is None or not access.user_id:
                continue
            given = by_user.setdefault(access.user_id, {})
            for policy_id in jit.policy_ids:
                current = given.get(policy_id)
                if policy_id in self._policies and (
                    current is None or current.expires_at < access.expires_at
                ):
                    given[policy_id] = _Grant(access.request_id, access.expires_at)
        return by_user

    def engine_input(
        self,
        principal: Principal,
        action: TargetAccess | ApiCall,
        now: float,
        *,
        explain: bool = False,
    ) -> dict[str, Any]:
        """The engine input for one request: `decision_input` plus its scope."""
        document = decision_input(principal, action, now, explain=explain)
        if isinstance(action, TargetAccess):
            document["scope"] = self._scope(principal, action, explain=explain)
        else:
            document["scope"] = {}
        return document

    def _scope(
        self, principal: Principal, access: TargetAccess, *, explain: bool
    ) -> dict[str, Any]:
        grants = self._grants.get(principal.user_id, {}) if principal.user_id else {}
        covering = dict.fromkeys(self._by_target.get(access.target_id, ()))
        covering |= dict.fromkeys(self._by_environment.get(access.environment_id, ()))
        if explain:
            ids = covering | dict.fromkeys(grants)
            for key in _subject_keys(principal):
                ids |= dict.fromkeys(self._by_subject.get(key, ()))
        else:
            # A decision needs the policies of the verb's kind and recording policies that
            # cover the target and apply to the principal: no other typed policy can allow.
            kinds = (_KIND_OF_VERB[access.verb], "session_recording")
            ids = {
                policy_id: None
                for policy_id in covering
                if self._policies[policy_id].kind in kinds
                and (policy_id in grants or self._policies[policy_id].subjects.matches(principal))
            }
        jit_policies = (
            {
                policy_id: {
                    "id": policy_id,
                    "name": self._names[policy_id],
                    "subjects": jit.subjects.project(principal),
                }
                for policy_id, jit in self._jit_policies.items()
                if jit.subjects.matches(principal)
            }
            if explain
            else {}
        )
        scope: dict[str, Any] = {
            "policies": {
                i: self._policies[i].project(i, self._names[i], principal, access) for i in ids
            }
        }
        if grants:
            scope["jit_access"] = {i: grant.document() for i, grant in grants.items()}
        if explain:
            scope |= {"jit_policies": jit_policies, "others": len(self._policies) - len(ids)}
        return scope


def _subject_keys(principal: Principal) -> list[tuple[str, str]]:
    keys = [("group", group) for group in principal.groups]
    if principal.email:
        keys.append(("email", principal.email.lower()))
    if principal.api_key_id:
        keys.append(("api_key", principal.api_key_id))
    return keys


def _organization_controls(policy: Policy, rules: OrganizationControlsRules) -> dict[str, Any]:
    return {
        "id": policy.id,
        "name": policy.name,
        "mfa_required": rules.mfa_required,
        "mfa_window": rules.mfa_window,
        "mfa_window_text": format_duration(rules.mfa_window),
        "max_session_ttl": rules.max_session_ttl,
        "max_session_ttl_text": format_duration(rules.max_session_ttl),
    }


_VERB_TEXT = {
    Verb.SHELL: "a shell",
    Verb.EXEC: "commands",
    Verb.FILE_TRANSFER: "file transfers",
    Verb.TUNNEL: "tunnels",
    Verb.KUBE: "Kubernetes access",
}


def _who(principal: Principal) -> str:
    """How messages name the principal (never a secret: an API key's id is its public part)."""
    if principal.api_key_id:
        return f"API key {principal.api_key_id}"
    return principal.email.lower() or f"user {principal.user_id}"


def decision_input(
    principal: Principal, action: TargetAccess | ApiCall, now: float, *, explain: bool = False
) -> dict[str, Any]:
    """The engine input: the DecisionInput in JSON form (proto field names), plus a context.

    Custom Rego sees exactly this; `context` holds what the service computed for it (the time,
    the age of the session's MFA) as numbers, and as text for messages.
    """
    principal_doc: dict[str, Any] = {
        "user_id": principal.user_id,
        "subject": {
            "iss": principal.issuer,
            "sub": principal.subject,
            "email": principal.email.lower(),
        },
        "groups": list(principal.groups),
        "admin": principal.admin,
        "api_key_id": principal.api_key_id,
    }
    context: dict[str, Any] = {
        "now": now,
        "explain": explain,
        "mfa_verified": False,
        "who": _who(principal),
    }
    if principal.mfa_verified_at is not None:
        principal_doc["mfa_verify_time"] = format_time(principal.mfa_verified_at)
        age = max(0.0, now - principal.mfa_verified_at)
        context |= {"mfa_verified": True, "mfa_age": age, "mfa_age_text": format_duration(age)}
    document: dict[str, Any] = {"principal": principal_doc, "context": context}
    if isinstance(action, TargetAccess):
        access: dict[str, Any] = {
            "target_id": action.target_id,
            "environment_id": action.environment_id,
            "verb": f"VERB_{action.verb.name}",
            "target_user": action.target_user,
            "kube_groups": list(action.kube_groups),
        }
        if action.destination is not None:
            access["destination"] = {
                "host": action.destination.host.lower(),
                "port": action.destination.port,
            }
            context["destination"] = _destination_key(action.destination)
        document["target_access"] = access
        as_user = f' as "{action.target_user}"' if action.target_user else ""
        context["what"] = f"{_VERB_TEXT[action.verb]}{as_user}"
        context["where"] = f"target {action.target_id}"
    else:
        document["api_call"] = {"method": action.method, "access": action.access.value}
    return document
