"""The YAML file format of policies: what `zli policy create|update|import` read and
`zli policy show|export` write.

A file holds one policy per YAML document (documents are separated by `---`). Every document has
a `name`, a `kind` and an optional `description`; the other fields depend on the kind:

    name: ops-shell
    description: The ops team may open shells on production.
    kind: target_connect                # or kubernetes, proxy, session_recording,
                                        # just_in_time, organization_controls, rego
    subjects:                           # who: any entry matches
      emails: [alice@example.com]
      groups: [ops]                     # identity provider groups
      api_keys: [mzk_0123456789abcdef]  # service accounts, by API key id
    targets:                            # where: any entry matches
      names: [web-1]                    # targets by name (or `ids:` by id)
      environments: [prod]              # every target of an environment (name or id)
    target_users: [ubuntu]
    verbs: [shell, exec, file_transfer]
    max_session_duration: 8h

`KINDS` lists the fields of each kind. People name targets, environments and policies by name;
the file is read against a `Names` lookup that turns those names into the ids the service stores,
and written with an `Ids` lookup that turns ids back into names. Every error names the file and
the line, so a mistake in a file of fifty policies is quick to find.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import yaml
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from mrzap.errors import InvalidArgument

from ._format import duration_text, parse_duration

__all__ = [
    "EXAMPLES",
    "KINDS",
    "VERBS",
    "Ids",
    "Names",
    "PolicyDocument",
    "declared_names",
    "dump_policies",
    "kind_of",
    "parse_destination",
    "parse_policies",
]

#: Verbs by the lowercase name files and `zli policy explain --verb` use.
VERBS: dict[str, mrzap_pb2.Verb.ValueType] = {
    name.removeprefix("VERB_").lower(): value
    for name, value in mrzap_pb2.Verb.items()
    if value != mrzap_pb2.VERB_UNSPECIFIED
}

_SUBJECT_FIELDS = ("emails", "groups", "api_keys")
_TARGET_FIELDS = ("names", "ids", "environments")

#: The fields of each kind, in the order `zli policy export` writes them; a kind's name is the
#: name of its field in the `Policy.spec` oneof.
KINDS: dict[str, tuple[str, ...]] = {
    "target_connect": (
        "subjects",
        "targets",
        "target_users",
        "verbs",
        "max_session_duration",
    ),
    "kubernetes": (
        "subjects",
        "clusters",
        "cluster_users",
        "cluster_groups",
        "max_session_duration",
    ),
    "proxy": ("subjects", "targets", "destinations", "target_users", "max_session_duration"),
    "session_recording": ("subjects", "targets", "record_input"),
    "just_in_time": ("subjects", "policies", "approvers", "auto_approve", "max_duration"),
    "organization_controls": ("mfa_required", "mfa_window", "max_session_ttl"),
    "rego": ("module",),
}
_COMMON = ("name", "description", "kind")


#: A commented example of each kind, as `zli policy example KIND` prints it; each is a valid file.
EXAMPLES: dict[str, str] = {
    "target_connect": """\
name: ops-shell
description: The ops team may open shells and run commands on production.
kind: target_connect
subjects:                     # who; any entry matches
  emails: [alice@example.com]
  groups: [ops]               # identity provider groups
  api_keys: []                # service accounts, by API key id (mzk_...)
targets:                      # where; any entry matches
  names: [web-1]              # targets by name (or `ids:` by id)
  environments: [production]  # every target of an environment (name or id)
target_users: [ubuntu]        # the Unix users they may act as
verbs: [shell, exec, file_transfer]
max_session_duration: 8h      # leave out for the organisation's default
""",
    "kubernetes": """\
name: platform-kube
description: The platform team may use the production cluster as developers.
kind: kubernetes
subjects:
  groups: [platform]
clusters:                     # cluster targets, as `targets:` elsewhere
  environments: [production]
cluster_users: [developer]    # the users they may impersonate
cluster_groups: [view]        # the groups they may impersonate
max_session_duration: 4h
""",
    "proxy": """\
name: db-tunnels
description: Developers may reach the staging database through its jump host.
kind: proxy
subjects:
  groups: [developers]
targets:                      # where the tunnel starts
  names: [db-jump]
destinations: [db.internal:5432, "[fd00::5]:5432"]  # as seen from the target
target_users: [readonly]      # database users; leave out to allow only none
max_session_duration: 2h
""",
    "session_recording": """\
name: record-production
description: Record everything contractors type on production.
kind: session_recording
subjects:
  groups: [contractors]
targets:
  environments: [production]
record_input: true            # output is always recorded; this adds what they type
""",
    "just_in_time": """\
name: ops-break-glass
description: On-call engineers may ask for the ops team's access for up to 2 hours.
kind: just_in_time
subjects:                     # who may ask
  groups: [oncall]
policies: [ops-shell]         # the policies (name or id) an approved request gives
approvers:                    # who may approve or deny
  groups: [sre-leads]
auto_approve: false           # true: approved at once, without an approver
max_duration: 2h
""",
    "organization_controls": """\
name: organization
description: Organisation-wide controls; there is at most one such policy.
kind: organization_controls
mfa_required: true
mfa_window: 15m               # how long an MFA check counts as recent
max_session_ttl: 12h          # the longest any connection may last
""",
    "rego": """\
name: no-root-for-contractors
description: Custom Rego, evaluated after the typed policies; a deny wins.
kind: rego
module: |                     # its own package under mrzap.custom
  package mrzap.custom.contractors

  import rego.v1

  deny contains "contractors may not act as root" if {
    input.principal.groups[_] == "contractors"
    input.target_access.target_user == "root"
  }

  test_contractor_root_denied if {
    count(deny) == 1 with input as {
      "principal": {"groups": ["contractors"]},
      "target_access": {"target_user": "root"},
    }
  }
""",
}


class Names(Protocol):
    """Turns the names people write into ids; each raises LookupError(why) for an unknown one."""

    def target_id(self, name: str) -> str:
        """The id of the target named `name`."""
        ...

    def environment_id(self, ref: str) -> str:
        """The id of the environment whose name or id is `ref`."""
        ...

    def policy_id(self, ref: str) -> str:
        """The id of the policy whose name or id is `ref`."""
        ...


class Ids(Protocol):
    """Turns ids back into names for writing; None when an id has no (unique) name."""

    def target_name(self, target_id: str) -> str | None:
        """The name of the target `target_id`."""
        ...

    def environment_name(self, environment_id: str) -> str | None:
        """The name of the environment `environment_id`."""
        ...

    def policy_name(self, policy_id: str) -> str | None:
        """The name of the policy `policy_id`."""
        ...


@dataclasses.dataclass(frozen=True)
class PolicyDocument:
    """One policy read from a file, and where it was."""

    policy: policy_pb.Policy
    """The policy, with ids where the file had names; no id, times or version."""

    source: str
    """The file it came from, as named on the command line."""

    line: int
    """The line its document starts on (1-based)."""

    @property
    def where(self) -> str:
        """`FILE:LINE` for messages about the whole document."""
        return f"{self.source}:{self.line}"


def kind_of(policy: policy_pb.Policy) -> str:
    """The kind of a policy as files name it, e.g. "target_connect"; "" when it has no rules."""
    return policy.WhichOneof("spec") or ""


# --- reading -----------------------------------------------------------------------------------


class _Reader:
    """Reads YAML nodes into protobuf fields, raising errors that name the file and line."""

    def __init__(self, source: str, names: Names) -> None:
        self.source = source
        self.names = names

    def error(self, node: yaml.Node, message: str) -> InvalidArgument:
        return InvalidArgument(f"{self.source}:{node.start_mark.line + 1}: {message}")

    def mapping(self, node: yaml.Node, what: str, allowed: Sequence[str]) -> dict[str, yaml.Node]:
        """The keys and value nodes of a mapping that may hold only `allowed` keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping of {', '.join(allowed)}")
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key not in allowed:
                shown = key if isinstance(key, str) else "a non-text key"
                raise self.error(
                    key_node,
                    f"unknown field {shown!r} in {what}; expected one of: {', '.join(allowed)}",
                )
            if key in found:
                raise self.error(key_node, f"{key!r} appears twice in {what}")
            found[key] = value_node
        return found

    def text(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.error(node, f"{what} must be text")
        return str(node.value)

    def texts(self, node: yaml.Node, what: str) -> list[str]:
        """A list of text entries; a single entry may be written without brackets."""
        if isinstance(node, yaml.ScalarNode):
            return [self.text(node, what)]
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what} must be a list")
        return [self.text(item, f"each entry of {what}") for item in node.value]

    def flag(self, node: yaml.Node, what: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.error(node, f"{what} must be true or false")
        return str(node.value).lower() in ("true", "yes", "on")

    def duration(self, node: yaml.Node, what: str) -> Duration:
        text = self.text(node, what)
        try:
            return Duration(seconds=parse_duration(text))
        except ValueError as error:
            raise self.error(node, f"{what}: {error}") from None

    def lookup(self, node: yaml.Node, what: str, find: Callable[[str], str]) -> list[str]:
        """Each entry of a list of names, turned into an id by `find`."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        ids = []
        for item in items:
            name = self.text(item, f"each entry of {what}")
            try:
                ids.append(find(name))
            except LookupError as error:
                raise self.error(item, str(error.args[0] if error.args else error)) from None
        return ids

    def subjects(self, node: yaml.Node, what: str) -> policy_pb.SubjectSelector:
        fields = self.mapping(node, what, _SUBJECT_FIELDS)
        get = {key: self.texts(value, f"{what}.{key}") for key, value in fields.items()}
        return policy_pb.SubjectSelector(
            user_emails=get.get("emails", []),
            groups=get.get("groups", []),
            api_key_ids=get.get("api_keys", []),
        )

    def targets(self, node: yaml.Node, what: str) -> policy_pb.TargetSelector:
        fields = self.mapping(node, what, _TARGET_FIELDS)
        target_ids = self.texts(fields["ids"], f"{what}.ids") if "ids" in fields else []
        if "names" in fields:
            target_ids += self.lookup(fields["names"], f"{what}.names", self.names.target_id)
        environment_ids = []
        if "environments" in fields:
            environment_ids = self.lookup(
                fields["environments"], f"{what}.environments", self.names.environment_id
            )
        return policy_pb.TargetSelector(target_ids=target_ids, environment_ids=environment_ids)

    def verbs(self, node: yaml.Node) -> list[mrzap_pb2.Verb.ValueType]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        verbs = []
        for item in items:
            name = self.text(item, "each verb").strip().lower()
            if name not in VERBS:
                raise self.error(
                    item, f"unknown verb {name!r}; expected one of: {', '.join(VERBS)}"
                )
            verbs.append(VERBS[name])
        return verbs

    def destinations(self, node: yaml.Node) -> list[mrzap_pb2.Destination]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        found = []
        for item in items:
            try:
                found.append(parse_destination(self.text(item, "each destination")))
            except ValueError as error:
                raise self.error(item, str(error)) from None
        return found

    def document(self, root: yaml.Node) -> policy_pb.Policy:
        """The policy of one YAML document."""
        if not isinstance(root, yaml.MappingNode):
            raise self.error(root, "a policy must be a mapping with name, kind and its rules")
        kind_node = next(
            (value for key, value in root.value if getattr(key, "value", None) == "kind"), None
        )
        if kind_node is None:
            raise self.error(root, f"a policy needs a kind: one of {', '.join(KINDS)}")
        kind = self.text(kind_node, "kind")
        if kind not in KINDS:
            raise self.error(
                kind_node, f"unknown kind {kind!r}; expected one of: {', '.join(KINDS)}"
            )
        fields = self.mapping(root, f"a {kind} policy", _COMMON + KINDS[kind])
        if "name" not in fields:
            raise self.error(root, "a policy needs a name")
        policy = policy_pb.Policy(
            name=self.text(fields["name"], "name").strip(),
            description=self.text(fields["description"], "description")
            if "description" in fields
            else "",
        )
        rules = getattr(policy, kind)
        rules.SetInParent()  # a kind with every field left out still says which kind it is
        for key in KINDS[kind]:
            if key in fields:
                _assign(rules, key, self.value(key, fields[key]))
        if kind == "rego" and not policy.rego.module.strip():
            raise self.error(root, "a rego policy needs its Rego source in `module`")
        return policy

    def value(self, key: str, node: yaml.Node) -> Message | list[object] | bool | str:
        """The value of the rules field `key` (a key of `KINDS`) from its YAML node."""
        if key in ("subjects", "approvers"):
            return self.subjects(node, key)
        if key in ("targets", "clusters"):
            return self.targets(node, key)
        if key in ("target_users", "cluster_users", "cluster_groups"):
            return list(self.texts(node, key))
        if key == "verbs":
            return list(self.verbs(node))
        if key == "destinations":
            return list(self.destinations(node))
        if key == "policies":
            return list(self.lookup(node, key, self.names.policy_id))
        if key in ("max_session_duration", "max_duration", "mfa_window", "max_session_ttl"):
            return self.duration(node, key)
        if key in ("record_input", "auto_approve", "mfa_required"):
            return self.flag(node, key)
        if key == "module":
            return self.text(node, key)
        raise AssertionError(f"KINDS names {key!r} but the reader does not know it")


def _assign(rules: Message, key: str, value: Message | list[object] | bool | str) -> None:
    """Set a rules field, whatever its type; `policies` is stored as `policy_ids`."""
    field = "policy_ids" if key == "policies" else key
    if isinstance(value, Message):
        getattr(rules, field).CopyFrom(value)
    elif isinstance(value, list):
        getattr(rules, field).extend(value)
    else:
        setattr(rules, field, value)


def parse_policies(text: str, source: str, names: Names) -> list[PolicyDocument]:
    """Every policy in a YAML file's `text`; InvalidArgument naming `source:LINE` when one is wrong.

    Nothing is half-read: the first error stops the whole file.
    """
    reader = _Reader(source, names)
    try:
        roots = [root for root in yaml.compose_all(text, Loader=yaml.SafeLoader) if root]
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = error.problem or error.context or "not valid YAML"
        raise InvalidArgument(f"{source}{line}: not valid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise InvalidArgument(f"{source}: not valid YAML: {error}") from None
    documents = [
        PolicyDocument(reader.document(root), source, root.start_mark.line + 1) for root in roots
    ]
    if not documents:
        raise InvalidArgument(f"{source}: no policies in the file")
    seen: dict[str, PolicyDocument] = {}
    for document in documents:
        name = document.policy.name
        if not name:
            raise InvalidArgument(f"{document.where}: a policy needs a name")
        if name in seen:
            raise InvalidArgument(
                f"{document.where}: the policy {name!r} is also defined at line {seen[name].line}"
            )
        seen[name] = document
    return documents


def declared_names(text: str) -> frozenset[str]:
    """The `name` of every document of a policy file, read leniently before the real reading:
    a file that is not valid YAML has none here, and `parse_policies` says what is wrong."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return frozenset()
    return frozenset(
        str(d["name"]).strip() for d in documents if isinstance(d, dict) and d.get("name")
    )


_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F.]*:[0-9a-fA-F:.]*)\]|(?P<host>[^:\s\[\]]+)):(?P<port>\d+)$"
)


def parse_destination(text: str) -> mrzap_pb2.Destination:
    """A destination written "HOST:PORT" (an IPv6 address in brackets); ValueError if not."""
    match = _HOST_PORT.match(text.strip())
    port = int(match["port"]) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ValueError(f"{text!r} is not a destination like db.internal:5432 or [::1]:22")
    return mrzap_pb2.Destination(host=match["v6"] or match["host"], port=port)


# --- writing -----------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Writes multi-line text (Rego modules) as a `|` block, the way people write it."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _destination_text(destination: mrzap_pb2.Destination) -> str:
    host = f"[{destination.host}]" if ":" in destination.host else destination.host
    return f"{host}:{destination.port}"


def _subjects_data(selector: policy_pb.SubjectSelector) -> dict[str, list[str]]:
    data = {
        "emails": list(selector.user_emails),
        "groups": list(selector.groups),
        "api_keys": list(selector.api_key_ids),
    }
    return {key: value for key, value in data.items() if value}


def _targets_data(selector: policy_pb.TargetSelector, ids: Ids) -> dict[str, list[str]]:
    named: list[str] = []
    unnamed: list[str] = []
    for target_id in selector.target_ids:
        name = ids.target_name(target_id)
        (named if name else unnamed).append(name or target_id)
    environments = [ids.environment_name(e) or e for e in selector.environment_ids]
    data = {"names": named, "ids": unnamed, "environments": environments}
    return {key: value for key, value in data.items() if value}


def _field_data(rules: object, key: str, ids: Ids) -> object:
    """The YAML value of the field `key` of a kind's rules; None or empty to leave it out."""
    value = getattr(rules, "policy_ids" if key == "policies" else key)
    if key in ("subjects", "approvers"):
        return _subjects_data(value)
    if key in ("targets", "clusters"):
        return _targets_data(value, ids)
    if key == "verbs":
        return [name for verb in value for name, v in VERBS.items() if v == verb]
    if key == "destinations":
        return [_destination_text(d) for d in value]
    if key == "policies":
        return [ids.policy_name(p) or p for p in value]
    if isinstance(value, Duration):
        seconds = value.ToTimedelta().total_seconds()
        return duration_text(seconds) if seconds > 0 else None
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value or None
    return list(value)


def _policy_data(policy: policy_pb.Policy, ids: Ids) -> dict[str, object]:
    kind = kind_of(policy)
    data: dict[str, object] = {"name": policy.name}
    if policy.description:
        data["description"] = policy.description
    data["kind"] = kind
    rules = getattr(policy, kind)
    for key in KINDS[kind]:
        value = _field_data(rules, key, ids)
        # Flags are written even when false, so a file says what it means.
        if value or isinstance(value, bool):
            data[key] = value
    return data


def dump_policies(policies: Iterable[policy_pb.Policy], ids: Ids) -> str:
    """The policies as a YAML file that `parse_policies` reads back (names where ids have one)."""
    documents = [_policy_data(policy, ids) for policy in policies if kind_of(policy)]
    return yaml.dump_all(
        documents,
        Dumper=_Dumper,
        sort_keys=False,
        explicit_start=len(documents) > 1,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
