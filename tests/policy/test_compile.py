"""Compiling policies: custom packages, durations for people, and each request's scope."""

from __future__ import annotations

import pytest

from mrzap.errors import InvalidArgument
from policy._compile import CompiledPolicies, custom_package, format_duration, rename_package
from policy._model import (
    Policy,
    Principal,
    RegoRules,
    SubjectSelector,
    TargetAccess,
    TargetConnectRules,
    TargetSelector,
    Verb,
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (45, "45 s"),
        (900, "15 min"),
        (3600, "1 h"),
        (5400, "1 h 30 min"),
        (3661, "1 h 1 min 1 s"),
    ],
)
def test_durations_read_like_people_write_them(seconds: float, text: str) -> None:
    """Durations in messages are hours, minutes and seconds."""
    assert format_duration(seconds) == text


def test_the_package_clause_comes_first() -> None:
    """Comments and blank lines may precede the package clause; nothing else may."""
    module = "# Contractors.\n\n  package mrzap.custom.contractors  # ours\nimport rego.v1\n"
    assert custom_package(module) == "mrzap.custom.contractors"
    renamed = rename_package(module, "mrzap.check_1")
    assert custom_package(renamed.replace("mrzap.check_1", "mrzap.custom.x")) == "mrzap.custom.x"
    for bad in (
        "import rego.v1\npackage mrzap.custom.x\n",
        "package mrzap.custom\n",
        "package mrzap.custom.x.y\n",
        "package mrzap.authz\n",
        'package mrzap.custom["x"]\n',
        "",
    ):
        with pytest.raises(InvalidArgument):
            custom_package(bad)


def _shell(policy_id: str, subjects: SubjectSelector, targets: TargetSelector) -> Policy:
    rules = TargetConnectRules(subjects, targets, ("root", "ubuntu"), (Verb.SHELL,))
    return Policy(policy_id, policy_id, "", rules, 1, 0, 0)


def test_the_scope_holds_only_what_the_request_can_look_up() -> None:
    """A decision sees the covering policies about the principal, their sets cut to its keys."""
    compiled = CompiledPolicies(
        [
            _shell("mine", SubjectSelector(groups=("ops", "dev")), TargetSelector(("t-1", "t-2"))),
            _shell("env", SubjectSelector(user_emails=("A@x.com",)), TargetSelector((), ("prod",))),
            _shell("others", SubjectSelector(groups=("sales",)), TargetSelector(("t-1",))),
            _shell("elsewhere", SubjectSelector(groups=("ops",)), TargetSelector(("t-9",))),
            Policy("r", "r", "", RegoRules("package mrzap.custom.r\n"), 1, 0, 0),
        ]
    )
    alice = Principal(user_id="u", email="a@x.com", groups=("ops",))
    access = TargetAccess("t-1", "prod", Verb.SHELL, "root")
    scope = compiled.engine_input(alice, access, 0.0)["scope"]
    assert set(scope["policies"]) == {"mine", "env"}
    assert scope["policies"]["mine"] == {
        "id": "mine",
        "name": "mine",
        "kind": "target_connect",
        "subjects": {"groups": {"ops": True}},
        "targets": {"ids": {"t-1": True}},
        "target_users": {"root": True},
        "verbs": {"VERB_SHELL": True},
    }
    explained = compiled.engine_input(alice, access, 0.0, explain=True)["scope"]
    assert set(explained["policies"]) == {"mine", "env", "others", "elsewhere"}
    assert explained["others"] == 0
    assert "custom_r.rego" in compiled.bundle.modules
