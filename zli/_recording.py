"""`zli recording`: list, play, watch, verify and export session recordings (PROTOCOL.md section 8).

Every command that shows a recording verifies its chunks under the agent's key first (`play
--no-verify` is the explicit exception), so what zli shows is what the agent signed, whatever the
service stored or relayed. `verify --file` works offline from a file `export --raw` saved.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from mrzap.errors import InvalidArgument
from mrzap.recording import ChainVerifier, RecordingError, RecordingFault, VerifiedRecording

from ._audit import audit, stream, target_id, target_names, user_id
from ._client import Client
from ._context import client
from ._errors import clear_errors
from ._format import field_time, json_option, table
from ._listing import echo_list, pages
from ._playback import (
    VerificationFailed,
    agent_key,
    key_fingerprint,
    play,
    unverified_events,
    verify_chunks,
)
from ._recording_files import RawRecording, read_raw, write_cast, write_raw

__all__ = ["recording_group"]

#: Recordings shown without --all.
FIRST_PAGE = 100
_CHUNK_PAGE = 500

#: Recording states by the name zli shows and accepts.
STATES: dict[str, audit_pb.RecordingState.ValueType] = {
    "live": audit_pb.RECORDING_STATE_LIVE,
    "complete": audit_pb.RECORDING_STATE_COMPLETE,
    "incomplete": audit_pb.RECORDING_STATE_INCOMPLETE,
}

_key_option = click.option(
    "--key",
    default="",
    metavar="BASE64",
    help="The agent's public key (as `zli targets show` prints it): refuse any other.",
)


@click.group("recording")
def recording_group() -> None:
    """Session recordings: signed by the target's agent, checked by zli before it shows them.

    You see the recordings of your own sessions; administrators see the whole organisation's.
    """


@recording_group.command("list")
@click.option("--user", default="", help="Only this user's recordings (email or id).")
@click.option("--target", default="", help="Only recordings on this target (name or id).")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(list(STATES)),
    help="Only recordings in this state; repeatable.",
)
@click.option("--all", "every", is_flag=True, help=f"Every page (default: the first {FIRST_PAGE}).")
@json_option
@click.pass_context
@clear_errors
def list_command(
    ctx: click.Context,
    user: str,
    target: str,
    states: tuple[str, ...],
    every: bool,
    as_json: bool,
) -> None:
    """List recordings, newest first."""
    service = client(ctx)
    request = audit_pb.ListRecordingsRequest(
        page_size=FIRST_PAGE,
        user_id=user_id(service, user) if user else "",
        target_id=target_id(service, target) if target else "",
        states=[STATES[state] for state in states],
    )

    def fetch(token: str) -> tuple[Sequence[audit_pb.Recording], str]:
        request.page_token = token
        answer = service.call(audit(service).ListRecordings, request)
        return answer.recordings, answer.next_page_token

    recordings, more = pages(fetch, every)

    def render(found: Sequence[audit_pb.Recording]) -> str:
        names = target_names(service)
        return table(
            ("ID", "USER", "TARGET", "AS", "START (UTC)", "DURATION", "STATE", "CHUNKS"),
            (_row(r, names) for r in found),
        )

    echo_list(
        recordings,
        as_json=as_json,
        empty="No recordings.",
        render=render,
        more=f"(only the first {FIRST_PAGE}: add --all for every recording)" if more else None,
    )


def _row(recording: audit_pb.Recording, names: dict[str, str]) -> tuple[str, ...]:
    seconds = recording.end_time.ToSeconds() - recording.start_time.ToSeconds()
    state = next((name for name, value in STATES.items() if value == recording.state), "unknown")
    return (
        recording.connection_id,
        recording.subject.email or recording.user_id,
        names.get(recording.target_id, recording.target_id),
        recording.target_user,
        field_time(recording, "start_time", "-"),
        _duration(seconds) if recording.HasField("end_time") else "-",
        state,
        str(recording.chunk_count),
    )


def _duration(seconds: float) -> str:
    whole = max(round(seconds), 0)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def fetch(service: Client, connection_id: str) -> RawRecording:
    """A recording's metadata and all its stored chunks, in chain order."""
    request = audit_pb.ListRecordingChunksRequest(
        connection_id=connection_id, page_size=_CHUNK_PAGE
    )
    metadata: audit_pb.Recording | None = None
    chunks: list[bytes] = []
    seen_tokens: set[str] = set()
    while True:
        answer = service.call(audit(service).ListRecordingChunks, request)
        if metadata is None:
            metadata = answer.recording
        chunks.extend(answer.chunks)
        token = answer.next_page_token
        if not token:
            break
        if token in seen_tokens:
            raise InvalidArgument("the service returned the same page of chunks twice")
        seen_tokens.add(token)
        request.page_token = token
    assert metadata is not None  # the loop runs at least once
    return RawRecording(metadata, tuple(chunks))


def _verified(raw: RawRecording, connection_id: str, pinned: str) -> VerifiedRecording:
    key = agent_key(raw.recording.agent_public_key, pinned)
    return verify_chunks(raw.chunks, key, connection_id)


def _sleep(seconds: float) -> None:
    """Wait between replayed events (tests replace it to see the pauses without waiting)."""
    time.sleep(seconds)


def _write(data: str) -> None:
    """Write session output to the terminal at once (it holds escape sequences: not echo)."""
    sys.stdout.flush()  # anything echoed before must come first
    sys.stdout.buffer.write(data.encode("utf-8", "replace"))
    sys.stdout.buffer.flush()


@recording_group.command("play")
@click.argument("connection_id", metavar="ID")
@click.option(
    "--speed",
    type=click.FloatRange(min=0.01, max=1000),
    default=1.0,
    show_default=True,
    help="Play this many times faster.",
)
@click.option(
    "--idle-limit",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Cut pauses longer than this.",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Play even a recording that fails verification (what it shows may be forged).",
)
@_key_option
@click.pass_context
@clear_errors
def play_command(
    ctx: click.Context,
    connection_id: str,
    speed: float,
    idle_limit: float | None,
    no_verify: bool,
    key: str,
) -> None:
    """Replay recording ID in the terminal with its timing.

    ID is the recorded connection's id, as `zli recording list` shows it. The recording is
    verified before anything is shown.
    """
    service = client(ctx)
    raw = fetch(service, connection_id)
    if no_verify:
        events = unverified_events(raw.chunks)
        click.echo("zli: playing WITHOUT verification: this may not be what happened", err=True)
    else:
        recording = _verified(raw, connection_id, key)
        events = list(recording.events)
        if not recording.complete:
            click.echo("zli: the recording has no final chunk (live or cut short)", err=True)
    play(events, _write, _sleep, speed=speed, idle_limit=idle_limit)


@recording_group.command("watch")
@click.argument("connection_id", metavar="ID")
@_key_option
@click.pass_context
@clear_errors
def watch_command(ctx: click.Context, connection_id: str, key: str) -> None:
    """Watch recording ID's session live; Ctrl-C stops.

    What the session showed so far comes first, then its output as it happens. Each chunk is
    verified as it arrives; the view ends when the session does.
    """
    service = client(ctx)
    request = audit_pb.WatchRecordingRequest(connection_id=connection_id, start_seq=0)
    verifier: ChainVerifier | None = None
    responses = stream(service, audit(service).WatchRecording, request)
    with contextlib.closing(responses):
        try:
            for response in responses:
                verifier = _watch_frame(response, verifier, connection_id, key)
                if verifier.finished:
                    break
        except KeyboardInterrupt:
            click.echo("\r\nzli: stopped watching.", err=True)
            return
    if verifier is not None and verifier.finished:
        click.echo(
            f"\r\nzli: the session ended ({verifier.chunk_count} chunks verified).", err=True
        )
    else:
        click.echo("\r\nzli: the recording stopped without a final chunk (incomplete).", err=True)


def _watch_frame(
    response: audit_pb.WatchRecordingResponse,
    verifier: ChainVerifier | None,
    connection_id: str,
    pinned: str,
) -> ChainVerifier:
    """Handle one message of the watch stream; returns the verifier for the next."""
    if response.HasField("recording"):
        if verifier is not None:
            raise InvalidArgument("the service sent the recording's metadata twice")
        key = agent_key(response.recording.agent_public_key, pinned)
        return ChainVerifier(key, connection_id)
    if verifier is None:
        raise InvalidArgument("the service sent a chunk before the recording's metadata")
    number = verifier.chunk_count
    try:
        chunk = verifier.add(response.chunk)
    except RecordingError as error:
        raise VerificationFailed(connection_id, error.fault, number, error.detail) from None
    for event in chunk.events:
        if event.code == "o":
            _write(event.data)
    return verifier


@recording_group.command("verify")
@click.argument("connection_id", metavar="[ID]", required=False, default="")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Verify a file `zli recording export ID --raw FILE` saved, with no service.",
)
@click.option(
    "--require-complete", is_flag=True, help="Fail unless the recording has its final chunk."
)
@_key_option
@click.pass_context
@clear_errors
def verify_command(
    ctx: click.Context, connection_id: str, path: Path | None, require_complete: bool, key: str
) -> None:
    """Check a recording's signatures and hash chain: ID, or a --file.

    Prints OK with counts, or the fault and the chunk where the recording breaks; the exit code
    is non-zero on any failure.
    """
    if bool(connection_id) == (path is not None):
        raise click.UsageError("give either a recording ID or --file FILE")
    raw = read_raw(path) if path is not None else fetch(client(ctx), connection_id)
    name = connection_id or raw.recording.connection_id
    public = agent_key(raw.recording.agent_public_key, key)
    recording = verify_chunks(raw.chunks, public, name)
    if require_complete and not recording.complete:
        raise VerificationFailed(
            name,
            RecordingFault.INCOMPLETE,
            recording.chunk_count - 1,
            "the recording has no final chunk",
        )
    state = "complete" if recording.complete else "incomplete (no final chunk)"
    click.echo(
        f"OK: recording {name}: {recording.chunk_count} chunks, {len(recording.events)} events, "
        f"{len(recording.commands)} commands, {state}; "
        f"signed by agent key {key_fingerprint(public)}"
    )


@recording_group.command("export")
@click.argument("connection_id", metavar="ID")
@click.option(
    "-o",
    "--output",
    default="",
    metavar="FILE.cast",
    help="Where to write the asciicast v2 file (default ID.cast; - for stdout).",
)
@click.option(
    "--raw",
    "raw_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the signed chunks and the agent's key for `verify --file` instead.",
)
@_key_option
@click.pass_context
@clear_errors
def export_command(
    ctx: click.Context, connection_id: str, output: str, raw_path: Path | None, key: str
) -> None:
    """Export recording ID as an asciicast v2 file.

    `asciinema play FILE` plays it. The recording is verified first. With --raw, the exact
    signed chunks and the agent's key are saved instead, unchecked, as evidence that
    `zli recording verify --file` checks offline.
    """
    raw = fetch(client(ctx), connection_id)
    if raw_path is not None:
        write_raw(raw_path, raw)
        click.echo(f"Saved {len(raw.chunks)} signed chunks of {connection_id} to {raw_path}.")
        if not output:
            return
    recording = _verified(raw, connection_id, key)
    if output == "-":
        click.echo(write_cast(None, recording), nl=False)
        return
    target = Path(output or f"{connection_id}.cast")
    write_cast(target, recording)
    complete = "" if recording.complete else " (no final chunk: live or cut short)"
    click.echo(f"Wrote {target}: {len(recording.events)} events{complete}.")
