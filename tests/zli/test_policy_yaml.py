"""The YAML format of policy files: every kind reads and writes back unchanged, names become ids
and back, and every mistake is one clear message naming the file and the line."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from mrzap.errors import InvalidArgument
from zli._policy_yaml import (
    EXAMPLES,
    KINDS,
    VERBS,
    declared_names,
    dump_policies,
    kind_of,
    parse_destination,
    parse_policies,
)


class Directory:
    """Names and ids as a fake service knows them: target `web-1` is `tgt-web-1`, and so on.

    Ids starting with `raw-` have no name, as for a target deleted since.
    """

    def target_id(self, name: str) -> str:
        if name.startswith("missing"):
            raise LookupError(f"no target named {name!r}: `zli targets list` shows them")
        return f"tgt-{name}"

    def environment_id(self, ref: str) -> str:
        return ref if ref.startswith("env-") else f"env-{ref}"

    def policy_id(self, ref: str) -> str:
        return ref if ref.startswith("pol-") else f"pol-{ref}"

    def target_name(self, target_id: str) -> str | None:
        return target_id.removeprefix("tgt-") if target_id.startswith("tgt-") else None

    def environment_name(self, environment_id: str) -> str | None:
        return environment_id.removeprefix("env-")

    def policy_name(self, policy_id: str) -> str | None:
        return policy_id.removeprefix("pol-")


NAMES = Directory()


def read(text: str) -> list[policy_pb.Policy]:
    return [document.policy for document in parse_policies(text, "policies.yaml", NAMES)]


def error_of(text: str) -> str:
    with pytest.raises(InvalidArgument) as raised:
        read(text)
    return raised.value.message


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_example_reads_and_writes_back_unchanged(kind: str) -> None:
    [policy] = read(EXAMPLES[kind])
    assert kind_of(policy) == kind
    written = dump_policies([policy], NAMES)
    assert read(written) == [policy]
    assert dump_policies(read(written), NAMES) == written


def test_the_target_connect_example_reads_into_the_contract() -> None:
    [policy] = read(EXAMPLES["target_connect"])
    assert policy == policy_pb.Policy(
        name="ops-shell",
        description="The ops team may open shells and run commands on production.",
        target_connect=policy_pb.TargetConnectPolicy(
            subjects=policy_pb.SubjectSelector(user_emails=["alice@example.com"], groups=["ops"]),
            targets=policy_pb.TargetSelector(
                target_ids=["tgt-web-1"], environment_ids=["env-production"]
            ),
            target_users=["ubuntu"],
            verbs=[mrzap_pb2.VERB_SHELL, mrzap_pb2.VERB_EXEC, mrzap_pb2.VERB_FILE_TRANSFER],
            max_session_duration=Duration(seconds=8 * 3600),
        ),
    )


def test_every_kind_in_one_file_and_the_lines_they_start_on() -> None:
    text = "---\n".join(EXAMPLES.values())
    documents = parse_policies(text, "all.yaml", NAMES)
    assert [kind_of(d.policy) for d in documents] == list(KINDS)
    assert documents[0].where == "all.yaml:1"
    second = EXAMPLES["target_connect"].count("\n") + 2  # after the first document and `---`
    assert documents[1].where == f"all.yaml:{second}"
    assert declared_names(text) == {d.policy.name for d in documents}


def test_unnamed_ids_are_written_as_ids_and_rego_as_a_block() -> None:
    policy = policy_pb.Policy(
        name="mixed",
        session_recording=policy_pb.SessionRecordingPolicy(
            targets=policy_pb.TargetSelector(target_ids=["raw-1", "tgt-web-2"]),
        ),
    )
    written = dump_policies([policy], NAMES)
    assert "names:\n  - web-2\n  ids:\n  - raw-1\n" in written
    assert "record_input: false" in written  # flags are written even when false
    rego = policy_pb.Policy(name="r", rego=policy_pb.RegoPolicy(module="package a\n\nb := 1\n"))
    assert "module: |\n  package a\n\n  b := 1\n" in dump_policies([rego], NAMES)


def test_a_kind_with_no_rules_still_says_its_kind() -> None:
    [policy] = read("name: defaults\nkind: organization_controls\n")
    assert policy.HasField("organization_controls")
    assert dump_policies([policy], NAMES) == (
        "name: defaults\nkind: organization_controls\nmfa_required: false\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nkind: proxy\ntargets: [\n", "policies.yaml:4: not valid YAML: expected the"),
        ("name: a\n\tkind: proxy\n", "policies.yaml:2: not valid YAML: found character '\\t'"),
        ("", "policies.yaml: no policies in the file"),
        ("- a\n- b\n", "policies.yaml:1: a policy must be a mapping with name, kind and its rules"),
        ("name: a\n", "policies.yaml:1: a policy needs a kind: one of target_connect, kubernetes"),
        ("kind: proxy\n", "policies.yaml:1: a policy needs a name"),
        (
            "name: a\nkind: ssh\n",
            "policies.yaml:2: unknown kind 'ssh'; expected one of: target_connect, kubernetes",
        ),
        (
            "name: a\nkind: proxy\nverbs: [shell]\n",
            "policies.yaml:3: unknown field 'verbs' in a proxy policy; expected one of: name, "
            "description, kind, subjects, targets, destinations, target_users, "
            "max_session_duration",
        ),
        (
            "name: a\nkind: proxy\nsubjects:\n  users: [bob]\n",
            "policies.yaml:4: unknown field 'users' in subjects; expected one of: emails, groups, "
            "api_keys",
        ),
        (
            "name: a\nkind: proxy\nsubjects: [bob]\n",
            "policies.yaml:3: subjects must be a mapping of emails, groups, api_keys",
        ),
        (
            "name: a\nkind: target_connect\nverbs:\n  - shell\n  - fly\n",
            "policies.yaml:5: unknown verb 'fly'; expected one of: shell, exec, file_transfer, "
            "tunnel, kube",
        ),
        (
            "name: a\nkind: target_connect\nmax_session_duration: 3600\n",
            "policies.yaml:3: max_session_duration: '3600' is not a duration like 90s, 15m, 24h",
        ),
        (
            "name: a\nkind: proxy\ndestinations: [db.internal]\n",
            "policies.yaml:3: 'db.internal' is not a destination like db.internal:5432",
        ),
        (
            "name: a\nkind: proxy\ndestinations: ['db:70000']\n",
            "policies.yaml:3: 'db:70000' is not a destination",
        ),
        (
            "name: a\nkind: proxy\ntargets:\n  names:\n    - web-1\n    - missing-2\n",
            "policies.yaml:6: no target named 'missing-2': `zli targets list` shows them",
        ),
        (
            "name: a\nkind: session_recording\nrecord_input: maybe\n",
            "policies.yaml:3: record_input must be true or false",
        ),
        ("name: a\nkind: rego\n", "policies.yaml:1: a rego policy needs its Rego source"),
        ("name: a\nkind: rego\nmodule:\n", "policies.yaml:3: module must be text"),
        (
            "name: a\nname: b\nkind: proxy\n",
            "policies.yaml:2: 'name' appears twice in a proxy policy",
        ),
        (
            "name: a\nkind: proxy\n---\nname: a\nkind: rego\nmodule: x\n",
            "policies.yaml:4: the policy 'a' is also defined at line 1",
        ),
        ("name: ''\nkind: proxy\n", "policies.yaml:1: a policy needs a name"),
    ],
)
def test_mistakes_name_the_file_and_line(text: str, message: str) -> None:
    assert error_of(text).startswith(message)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("db:5432", "db", 5432), (" 10.0.0.5:22 ", "10.0.0.5", 22), ("[fd00::1]:443", "fd00::1", 443)],
)
def test_destinations(text: str, host: str, port: int) -> None:
    assert parse_destination(text) == mrzap_pb2.Destination(host=host, port=port)


@pytest.mark.parametrize("text", ["db", "db:0", "db:x", "fd00::1:22", ":22", "[db]:22"])
def test_bad_destinations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a destination"):
        parse_destination(text)


# --- any policy reads back as it was written ---------------------------------------------------

_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12
)
_texts = st.lists(_text, max_size=3)
_name = _text.map(str.strip).filter(bool)
_seconds = st.integers(min_value=1, max_value=400 * 86400)
_subjects = st.builds(
    policy_pb.SubjectSelector, user_emails=_texts, groups=_texts, api_key_ids=_texts
)
# Named targets (tgt-…) are written under `names:` and read back after the unnamed ones.
_targets = st.builds(
    lambda raw, named, envs: policy_pb.TargetSelector(
        target_ids=[f"raw-{r}" for r in raw] + [f"tgt-{n}" for n in named],
        environment_ids=[f"env-{e}" for e in envs],
    ),
    st.lists(_name, max_size=2),
    st.lists(_name, max_size=2),
    st.lists(_name, max_size=2),
)
_host = st.from_regex(r"[a-z0-9.-]{1,10}|[0-9a-f]{1,4}(:[0-9a-f]{1,4}){2,3}", fullmatch=True)
_destination = st.builds(
    mrzap_pb2.Destination, host=_host, port=st.integers(min_value=1, max_value=65535)
)


def _duration(seconds: int) -> Duration:
    return Duration(seconds=seconds)


_rules = st.one_of(
    st.builds(
        lambda s, t, u, v, d: policy_pb.Policy(
            target_connect=policy_pb.TargetConnectPolicy(
                subjects=s, targets=t, target_users=u, verbs=v, max_session_duration=_duration(d)
            )
        ),
        _subjects,
        _targets,
        _texts,
        st.lists(st.sampled_from(list(VERBS.values())), max_size=3),
        _seconds,
    ),
    st.builds(
        lambda s, t, u, g: policy_pb.Policy(
            kubernetes=policy_pb.KubernetesPolicy(
                subjects=s, clusters=t, cluster_users=u, cluster_groups=g
            )
        ),
        _subjects,
        _targets,
        _texts,
        _texts,
    ),
    st.builds(
        lambda s, t, d, u: policy_pb.Policy(
            proxy=policy_pb.ProxyPolicy(subjects=s, targets=t, destinations=d, target_users=u)
        ),
        _subjects,
        _targets,
        st.lists(_destination, max_size=3),
        _texts,
    ),
    st.builds(
        lambda s, t, r: policy_pb.Policy(
            session_recording=policy_pb.SessionRecordingPolicy(
                subjects=s, targets=t, record_input=r
            )
        ),
        _subjects,
        _targets,
        st.booleans(),
    ),
    st.builds(
        lambda s, p, a, auto, d: policy_pb.Policy(
            just_in_time=policy_pb.JustInTimePolicy(
                subjects=s,
                policy_ids=[f"pol-{n}" for n in p],
                approvers=a,
                auto_approve=auto,
                max_duration=_duration(d),
            )
        ),
        _subjects,
        st.lists(_name, max_size=3),
        _subjects,
        st.booleans(),
        _seconds,
    ),
    st.builds(
        lambda m, w, t: policy_pb.Policy(
            organization_controls=policy_pb.OrganizationControlsPolicy(
                mfa_required=m, mfa_window=_duration(w), max_session_ttl=_duration(t)
            )
        ),
        st.booleans(),
        _seconds,
        _seconds,
    ),
    st.builds(
        lambda m: policy_pb.Policy(rego=policy_pb.RegoPolicy(module=m)),
        st.text(st.characters(codec="ascii", exclude_categories=("Cc", "Cs")) | st.just("\n"))
        .filter(str.strip)
        .map(lambda m: m.rstrip(" ")),
    ),
)


@given(st.lists(st.tuples(_name, _text, _rules), min_size=1, max_size=3, unique_by=lambda t: t[0]))
def test_any_policies_read_back_as_written(
    generated: list[tuple[str, str, policy_pb.Policy]],
) -> None:
    policies = []
    for name, description, rules in generated:
        policy = policy_pb.Policy(name=name, description=description)
        policy.MergeFrom(rules)
        policies.append(policy)
    assert [unset_empty(p) for p in read(dump_policies(policies, NAMES))] == [
        unset_empty(p) for p in policies
    ]


def unset_empty(message: Message) -> Message:
    """The message with its empty sub-messages unset: a file cannot tell the two apart."""
    for field, value in message.ListFields():
        if field.message_type is None or field.is_repeated:
            continue
        if value.ByteSize() == 0 and field.containing_oneof is None:
            message.ClearField(field.name)
        else:
            unset_empty(value)
    return message
