"""`zli logs commands` and `zli logs events` against a real gRPC AuditService on loopback
(tests/zli/audit_fake.py): the filter each sends, the tables they show, and the JSON lines export.
"""

from __future__ import annotations

import datetime
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from bastion.auth.v1 import auth_service_pb2 as auth_pb
from bastion.mrzap.v1 import mrzap_pb2
from bastion.policy.v1 import policy_service_pb2 as policy_pb
from bastion.registry.v1 import registry_service_pb2 as registry_pb
from mrzap.timestamps import to_timestamp
from zli.cli import main

from .audit_fake import API_KEY, AuditData, RunningServer, serve, zli_calls

T0 = 1_900_000_000.0
ALICE = mrzap_pb2.Subject(iss="https://idp", sub="alice", email="alice@example.com")
BOB = auth_pb.User(id="user-bob", email="bob@example.com")
WEB = registry_pb.Target(id="6d1f7a7e-0b8e-4c57-8d0e-3f7f2f6c9a11", name="web-1")


def command_event(n: int, command: str) -> audit_pb.AuditEvent:
    return audit_pb.AuditEvent(
        id=f"ev-{n}",
        time=to_timestamp(T0 + n),
        kind=audit_pb.EVENT_KIND_COMMAND,
        outcome=audit_pb.EVENT_OUTCOME_ALLOWED,
        actor=audit_pb.Actor(user_id="user-alice", subject=ALICE, target_id=WEB.id),
        command=audit_pb.CommandDetails(
            connection_id="conn-1", target_id=WEB.id, target_user="root", command=command
        ),
    )


CONNECTION = audit_pb.AuditEvent(
    id="ev-c",
    time=to_timestamp(T0),
    kind=audit_pb.EVENT_KIND_CONNECTION,
    outcome=audit_pb.EVENT_OUTCOME_DENIED,
    actor=audit_pb.Actor(user_id="user-alice", subject=ALICE),
    reasons=[policy_pb.DecisionReason(message="target user root is not allowed")],
    connection=audit_pb.ConnectionDetails(
        type=audit_pb.CONNECTION_EVENT_TYPE_REJECTED,
        connection_id="conn-2",
        target_id=WEB.id,
        verb=mrzap_pb2.VERB_SHELL,
        target_user="root",
        reject_code=mrzap_pb2.REASON_CODE_ACTION_TARGET_USER_NOT_ALLOWED,
    ),
)
DECISION = audit_pb.AuditEvent(
    id="ev-d",
    time=to_timestamp(T0 - 1),
    kind=audit_pb.EVENT_KIND_POLICY_DECISION,
    outcome=audit_pb.EVENT_OUTCOME_ALLOWED,
    actor=audit_pb.Actor(user_id="user-alice", subject=ALICE),
    policy_decision=audit_pb.PolicyDecisionDetails(decision_id="dec-1", grant_id="grant-1"),
)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    data = AuditData(targets=[WEB], users=[BOB], me=auth_pb.User(id="user-alice"))
    for running in serve(data):
        with zli_calls(running, monkeypatch):
            yield running


def zli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_logs_commands_sends_the_filter_and_shows_a_table(fake: RunningServer) -> None:
    fake.data.events = [command_event(2, "sudo rm -rf /tmp/x"), command_event(1, "printf 'a\x1b'")]
    result = zli(
        "logs", "commands", "--search", "rm", "--user", "bob@example.com", "--target", "web-1",
        "--since", "2030-03-17T17:00", "--until", "2030-03-18",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sent = fake.data.sent("ListEvents")[0].filter
    assert list(sent.kinds) == [audit_pb.EVENT_KIND_COMMAND]
    assert (sent.text, sent.user_id, sent.target_id) == ("rm", BOB.id, WEB.id)
    assert sent.start_time.ToDatetime() == datetime.datetime(2030, 3, 17, 17, 0)  # UTC
    assert sent.end_time.ToDatetime() == datetime.datetime(2030, 3, 18)
    assert result.stdout.splitlines() == [
        "TIME (UTC)           USER               TARGET  AS    COMMAND",
        "2030-03-17 17:46:42  alice@example.com  web-1   root  sudo rm -rf /tmp/x",
        # An escape sequence typed in a command is shown, never sent to the viewer's terminal.
        "2030-03-17 17:46:41  alice@example.com  web-1   root  printf 'a\\x1b'",
    ]


def test_logs_commands_pages_only_with_all(fake: RunningServer) -> None:
    fake.data.events = [command_event(n, f"cmd {n}") for n in (3, 2, 1)]
    first = zli("logs", "commands")
    assert "cmd 1" not in first.stdout
    assert "add --all" in first.stderr
    every = zli("logs", "commands", "--all", "--json")
    shown = [e["command"]["command"] for e in json.loads(every.stdout)]
    assert shown == ["cmd 3", "cmd 2", "cmd 1"]


def test_logs_refuses_bad_times_before_calling(fake: RunningServer) -> None:
    bad = zli("logs", "commands", "--since", "yesterday-ish")
    assert bad.exit_code == 8
    assert "neither a duration ago" in bad.stderr
    backwards = zli("logs", "events", "--since", "1h", "--until", "2h")
    assert backwards.exit_code == 8
    assert not fake.data.sent("ListEvents")


def test_logs_events_shows_kinds_outcomes_and_reasons(fake: RunningServer) -> None:
    fake.data.events = [command_event(1, "ls"), CONNECTION, DECISION]
    fake.data.page_size = 10
    result = zli("logs", "events", "--kind", "connection", "--outcome", "denied")
    assert result.exit_code == 0, result.output
    sent = fake.data.sent("ListEvents")[0].filter
    assert list(sent.kinds) == [audit_pb.EVENT_KIND_CONNECTION]
    assert list(sent.outcomes) == [audit_pb.EVENT_OUTCOME_DENIED]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "KIND", "OUTCOME", "WHO", "WHAT"]
    assert lines[1].split()[2:] == ["command", "allowed", "alice@example.com", "root@web-1:", "ls"]
    assert lines[2].endswith(
        "rejected shell root@web-1 connection conn-2 (REASON_CODE_ACTION_TARGET_USER_NOT_ALLOWED)"
        " — target user root is not allowed"
    )
    assert "decision dec-1, grant grant-1" in lines[3]


def test_logs_events_exports_json_lines_oldest_first(fake: RunningServer) -> None:
    fake.data.events = [command_event(1, "ls"), CONNECTION, DECISION]
    result = zli("logs", "events", "--export", "jsonl", "--kind", "command", "--kind", "decision")
    assert result.exit_code == 0, result.output
    sent = fake.data.sent("ExportEvents")[0].filter
    assert list(sent.kinds) == [
        audit_pb.EVENT_KIND_COMMAND,
        audit_pb.EVENT_KIND_POLICY_DECISION,
    ]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["ev-d", "ev-c", "ev-1"]
    assert rows[0]["kind"] == "EVENT_KIND_POLICY_DECISION"
    assert rows[1]["connection"]["reject_code"] == "REASON_CODE_ACTION_TARGET_USER_NOT_ALLOWED"
    assert rows[2]["command"] == {
        "connection_id": "conn-1",
        "target_id": WEB.id,
        "target_user": "root",
        "command": "ls",
    }
    assert rows[2]["actor"]["subject"]["email"] == "alice@example.com"
    assert fake.data.tokens == [f"Bearer {API_KEY}"]  # the stream carries the credentials too


def test_logs_events_export_to_a_private_file(fake: RunningServer, tmp_path: Path) -> None:
    fake.data.events = [command_event(1, "ls"), CONNECTION]
    out = tmp_path / "audit.jsonl"
    result = zli("logs", "events", "--export", "jsonl", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["ev-c", "ev-1"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "Exported 2 events" in result.stderr
    assert zli("logs", "events", "-o", str(out)).exit_code == 2  # -o only goes with --export
