"""Policies end to end: real IdP, `mrzapd serve` (embedded policy engine) and `zli` processes.

An administrator (alice) writes the organisation's policies as a YAML file naming targets and
environments by name, and imports it; a developer (dave) is denied before and allowed after, and
`zli policy explain` prints every reason. Custom Rego is tested on the service's engine and a
malformed module is refused with the engine's message. Just-in-time access goes request →
approve (by olivia, an approver) → allowed → denied again once it expires by itself.

The organisation is this module's own, so its policies (a custom deny rule among them) cannot
change what other end-to-end tests see.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import Cluster, start_cluster
from .test_admin_cli import ok, zli
from .test_login import enrol

POLICIES = """\
name: dev-shell
description: Developers may open shells on the e2e environment as ubuntu.
kind: target_connect
subjects:
  groups: [developers]
targets:
  environments: [e2e-policy]
target_users: [ubuntu, root]
verbs: [shell, exec]
max_session_duration: 2h
---
name: db-admin
description: Shells as postgres on web-1, only through just-in-time access.
kind: target_connect
targets:
  names: [web-1]
target_users: [postgres]
verbs: [shell]
---
name: db-break-glass
kind: just_in_time
subjects:
  groups: [developers]
policies: [db-admin]
approvers:
  groups: [mrzap-admins]
max_duration: 1h
---
name: record-developers
kind: session_recording
subjects:
  groups: [developers]
targets:
  environments: [e2e-policy]
record_input: true
---
name: no-root
description: Nobody acts as root, whatever other policies say.
kind: rego
module: |
  package mrzap.custom.no_root

  import rego.v1

  deny contains "nobody may act as root on a target" if {
    input.target_access.target_user == "root"
  }

  test_root_denied if {
    count(deny) == 1 with input as {"target_access": {"target_user": "root"}}
  }
"""


class Org:
    """This module's organisation: alice (administrator), olivia (approver), dave (developer)."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.alice, self.olivia, self.dave = (root / "alice", root / "olivia", root / "dave")

    def file(self, name: str, text: str) -> str:
        path = self.root / name
        path.write_text(text)
        return str(path)


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    root = tmp_path_factory.mktemp("policy")
    cluster, processes = start_cluster(root / "cluster")
    try:
        started = Org(cluster, root)
        for user in ("alice", "olivia", "dave"):
            enrol(cluster, root / user, user)
        yield started
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def web(org: Org) -> str:
    """The id of target web-1 in environment e2e-policy (made, not yet registered)."""
    ok(org.cluster, org.alice, "env", "create", "e2e-policy")
    made = ok(
        org.cluster,
        org.alice,
        "agent",
        "install-command",
        "--env",
        "e2e-policy",
        "--name",
        "web-1",
        "--json",
    )
    return str(json.loads(made)["target"]["id"])


def explain(org: Org, home: Path, *args: str) -> tuple[int, str]:
    return zli(org.cluster, home, "policy", "explain", *args)


def reason_rows(output: str) -> dict[str, str]:
    """The explain table's rows, as policy name → the rest of the row."""
    table = output.split("POLICY", 1)[1].splitlines()[1:]
    return {row.split()[0]: " ".join(row.split()[1:]) for row in table if row.strip()}


def test_policies_from_yaml_deny_then_allow_and_explain_every_reason(org: Org, web: str) -> None:
    code, output = explain(org, org.dave, "--target", web, "--target-user", "ubuntu")
    assert code == 11, output
    assert output.startswith(f"DENIED  you: shell on {web} as ubuntu")

    policies = org.file("policies.yaml", POLICIES)
    dry = ok(org.cluster, org.alice, "policy", "import", "--dry-run", policies)
    assert "Would create policy 'dev-shell'." in dry
    assert ok(org.cluster, org.alice, "policy", "list").strip() == "No policies."
    imported = ok(org.cluster, org.alice, "policy", "import", policies)
    assert imported.count("Created policy") == 5, imported

    code, output = explain(org, org.dave, "--target", web, "--target-user", "ubuntu")
    assert code == 0, output
    assert output.startswith(f"ALLOWED  you: shell on {web} as ubuntu")
    assert "longest session 2h; recorded: output and input" in output
    assert reason_rows(output)["dev-shell"].startswith("allow ")

    # A custom deny wins over the typed policy that allows it; an administrator may ask for dave.
    code, output = explain(
        org, org.alice, "--user", "dave@example.com", "--target", "web-1", "--target-user", "root"
    )
    assert code == 11, output
    assert output.startswith("DENIED  dave@example.com: shell on web-1 as root")
    assert reason_rows(output)["no-root"] == "deny nobody may act as root on a target"
    assert reason_rows(output)["dev-shell"].startswith("allow ")

    code, output = explain(org, org.dave, "--user", "olivia@example.com", "--target", web)
    assert code == 4, output
    assert "only administrators may explain another user's access" in output


def test_export_import_round_trip_and_versions(org: Org, web: str) -> None:
    exported = ok(org.cluster, org.alice, "policy", "export")
    assert "  names:\n  - web-1\n" in exported  # ids are written back as names
    assert "policies:\n- db-admin\n" in exported
    again = ok(org.cluster, org.alice, "policy", "import", org.file("export.yaml", exported))
    assert again.count("Unchanged policy") == 5, again

    changed = exported.replace("max_session_duration: 2h", "max_session_duration: 3h")
    updated = ok(org.cluster, org.alice, "policy", "import", org.file("changed.yaml", changed))
    assert re.search(r"Updated policy 'dev-shell' \(\S+\) to version 2\.", updated), updated
    assert "max_session_duration: 3h" in ok(org.cluster, org.alice, "policy", "show", "dev-shell")
    first = ok(org.cluster, org.alice, "policy", "show", "dev-shell", "--version", "1")
    assert "max_session_duration: 2h" in first
    assert first.startswith("# id ")


def test_bad_files_change_nothing(org: Org, web: str) -> None:
    before = ok(org.cluster, org.alice, "policy", "export")
    bad_yaml = org.file("bad.yaml", "name: extra\nkind: target_connect\nverbs: [shell, fly]\n")
    code, output = zli(org.cluster, org.alice, "policy", "import", bad_yaml)
    assert (code, output.strip()) == (
        8,
        f"zli: {bad_yaml}:3: unknown verb 'fly'; expected one of: "
        "shell, exec, file_transfer, tunnel, kube",
    )
    malformed = org.file(
        "malformed.yaml",
        "name: extra\nkind: target_connect\nverbs: [shell]\n---\n"
        "name: broken\nkind: rego\nmodule: |\n  package mrzap.custom.broken\n  deny contains\n",
    )
    code, output = zli(org.cluster, org.alice, "policy", "import", malformed)
    assert code == 8, output
    assert output.startswith(f"zli: {malformed}:5: the policy 'broken' is not valid: ")
    assert ok(org.cluster, org.alice, "policy", "export") == before


def test_custom_rego_tests_run_on_the_service(org: Org) -> None:
    module = POLICIES.split("module: |\n", 1)[1].replace("\n  ", "\n").removeprefix("  ")
    passing = org.file("no_root.rego", module)
    output = ok(org.cluster, org.alice, "policy", "test", passing)
    assert output.splitlines() == ["PASS  test_root_denied", "1 passed, 0 failed"]

    failing = org.file("wrong.rego", module.replace("count(deny) == 1", "count(deny) == 2"))
    code, output = zli(org.cluster, org.alice, "policy", "test", failing)
    assert code == 12, output
    assert output.startswith("FAIL  test_root_denied")

    broken = org.file("broken.rego", "package mrzap.custom.broken\n\ndeny contains\n")
    code, output = zli(org.cluster, org.alice, "policy", "test", broken)
    assert code == 8, output
    assert output.startswith(f"zli: {broken}: ")

    code, output = zli(org.cluster, org.dave, "policy", "test", passing)
    assert code == 4, output


def test_the_printed_examples_are_valid_on_the_service(org: Org, web: str) -> None:
    examples = ok(org.cluster, org.alice, "policy", "example")
    rego = yaml.safe_load(ok(org.cluster, org.alice, "policy", "example", "rego"))["module"]
    tested = ok(org.cluster, org.alice, "policy", "test", org.file("example.rego", rego))
    assert tested.splitlines() == ["PASS  test_contractor_root_denied", "1 passed, 0 failed"]
    # Every kind passes the service's checks once the targets and environments it names exist.
    ok(org.cluster, org.alice, "env", "create", "production")
    ok(
        org.cluster,
        org.alice,
        "agent",
        "install-command",
        "--name",
        "db-jump",
        "--env",
        "production",
    )
    file = org.file("examples.yaml", examples)
    checked = ok(org.cluster, org.alice, "policy", "import", "--dry-run", file)
    assert checked.endswith("Every policy is valid; nothing was changed (--dry-run).\n"), checked


def test_just_in_time_access_is_approved_then_expires(org: Org, web: str) -> None:
    jit = json.loads(ok(org.cluster, org.alice, "policy", "show", "db-break-glass", "--json"))
    as_postgres = ("--target", web, "--target-user", "postgres")
    code, output = explain(org, org.dave, *as_postgres)
    assert code == 11, output

    requested = ok(
        org.cluster,
        org.dave,
        "access",
        "request",
        jit["id"],
        "--duration",
        "6s",
        "--reason",
        "incident 42",
        "--json",
    )
    request_id = json.loads(requested)["id"]
    code, output = zli(org.cluster, org.dave, "access", "approve", request_id)
    assert code == 4, output  # not an approver (and never of one's own request)
    code, output = explain(org, org.dave, *as_postgres)
    assert code == 11, output  # pending is not approved

    pending = ok(org.cluster, org.olivia, "access", "list", "--state", "pending")
    row = rf"^{request_id}\s+db-break-glass\s+dave@example\.com\s+pending\s+6s\s"
    assert re.search(row, pending, re.MULTILINE), pending
    approved = ok(org.cluster, org.olivia, "access", "approve", request_id, "--comment", "ok")
    assert f"Access request {request_id} for 'db-break-glass' is approved until" in approved
    approved_at = time.monotonic()

    code, output = explain(org, org.dave, *as_postgres)
    assert code == 0, output
    assert "db-admin" in output or "db-break-glass" in output

    # The access ends by itself: nothing has to run for it.
    time.sleep(max(0.0, approved_at + 6.5 - time.monotonic()))
    code, output = explain(org, org.dave, *as_postgres)
    assert code == 11, output
    mine = json.loads(ok(org.cluster, org.dave, "access", "list", "--json"))
    assert [r["state"] for r in mine if r["id"] == request_id] == ["ACCESS_REQUEST_STATE_EXPIRED"]
