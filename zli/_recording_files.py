"""The files `zli recording export` writes: an asciicast v2 file, and a raw file that keeps the
exact signed chunks with the agent's key so `zli recording verify --file` needs no service.

The raw file is JSON lines: a header line
`{"format": "mrzap-recording/1", "connection_id": …, "agent_public_key": base64, "recording": {…}}`
then one line per chunk in chain order, `{"seq": n, "signed": base64 of the Signed bytes}`.
Both files may hold whatever the session showed, so they are written readable by the owner only.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

from google.protobuf import json_format

from bastion.audit.v1 import audit_service_pb2 as audit_pb
from mrzap.errors import InvalidArgument
from mrzap.keys import write_secret_file
from mrzap.recording import VerifiedRecording, asciicast_lines

__all__ = ["RAW_FORMAT", "RawRecording", "read_raw", "write_cast", "write_raw"]

#: The first line's "format" of a raw recording file.
RAW_FORMAT = "mrzap-recording/1"


@dataclasses.dataclass(frozen=True)
class RawRecording:
    """A recording as stored: its metadata, the agent's key and the exact signed chunks."""

    recording: audit_pb.Recording
    """The service's metadata, including `agent_public_key`."""

    chunks: tuple[bytes, ...]
    """The serialized Signed chunks, in chain order."""


def write_raw(path: Path, raw: RawRecording) -> None:
    """Save `raw` to `path` (mode 0600)."""
    header = {
        "format": RAW_FORMAT,
        "connection_id": raw.recording.connection_id,
        "agent_public_key": base64.b64encode(raw.recording.agent_public_key).decode(),
        "recording": json_format.MessageToDict(raw.recording, preserving_proto_field_name=True),
    }
    lines = [json.dumps(header, sort_keys=True)]
    lines.extend(
        json.dumps({"seq": seq, "signed": base64.b64encode(chunk).decode()})
        for seq, chunk in enumerate(raw.chunks)
    )
    write_secret_file(path, ("\n".join(lines) + "\n").encode())


def read_raw(path: Path) -> RawRecording:
    """Load a raw recording file; InvalidArgument names the line that is not as written."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"cannot read {path}: {error}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InvalidArgument(f"{path} is empty, not a raw recording")
    header = _json_object(path, 1, lines[0])
    if header.get("format") != RAW_FORMAT:
        raise InvalidArgument(
            f"{path} is not a raw recording ({RAW_FORMAT}): "
            "write one with `zli recording export ID --raw FILE`"
        )
    recording = audit_pb.Recording()
    metadata = header.get("recording", {})
    if not isinstance(metadata, dict):
        raise InvalidArgument(f"{path} line 1: the recording metadata is not a JSON object")
    try:
        json_format.ParseDict(metadata, recording)
    except json_format.ParseError as error:
        raise InvalidArgument(f"{path} line 1: bad recording metadata: {error}") from None
    recording.connection_id = str(header.get("connection_id", recording.connection_id))
    recording.agent_public_key = _base64(path, 1, header.get("agent_public_key"))
    chunks = []
    for number, line in enumerate(lines[1:], start=2):
        entry = _json_object(path, number, line)
        # The seq written is only a label for people; the verifier checks the signed seq itself.
        chunks.append(_base64(path, number, entry.get("signed")))
    return RawRecording(recording, tuple(chunks))


def write_cast(path: Path | None, recording: VerifiedRecording) -> str:
    """The asciicast v2 text of a verified recording, also saved to `path` (mode 0600) if given."""
    text = "".join(line + "\n" for line in asciicast_lines(recording))
    if path is not None:
        write_secret_file(path, text.encode())
    return text


def _json_object(path: Path, number: int, line: str) -> dict[str, object]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"{path} line {number} is not JSON: {error.msg}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{path} line {number} is not a JSON object")
    return value


def _base64(path: Path, number: int, value: object) -> bytes:
    if not isinstance(value, str):
        raise InvalidArgument(f"{path} line {number} lacks its base64 data")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or characters that are not even ASCII
        raise InvalidArgument(f"{path} line {number} holds bad base64") from None
