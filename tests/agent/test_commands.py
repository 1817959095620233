"""Commands read from a shell session's keystrokes (agent/_commands.py).

A table of real key sequences as terminals send them (xterm CSI and SS3 arrows, readline control
keys, bracketed paste) gives the command a user entered; property tests show that reads may split
the input anywhere, that plain typing is kept exactly and that no input breaks the extractor.
Password prompts are told apart on a real pseudo-terminal.
"""

from __future__ import annotations

import os
import termios
import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent._commands import (
    COMPLETION_MARK,
    HISTORY_MARK,
    MAX_COMMAND_CHARS,
    AlternateScreenTracker,
    CommandExtractor,
    TypedCommand,
    reads_secret,
)

H, T = HISTORY_MARK, COMPLETION_MARK
LEFT, RIGHT, UP = b"\x1b[D", b"\x1b[C", b"\x1b[A"


def commands_of(keys: bytes) -> list[str]:
    return [c.command for c in CommandExtractor().feed(keys, 1.0)]


KEY_SEQUENCES: list[tuple[str, bytes, list[str]]] = [
    ("plain", b"ls -la\r", ["ls -la"]),
    ("line feed ends a line too", b"ls\n", ["ls"]),
    ("keypad Enter", b"ls\x1bOMpwd\x1bOM", ["ls", "pwd"]),
    ("several in one read", b"cd /tmp\rls\r", ["cd /tmp", "ls"]),
    ("blank lines are no commands", b"\r  \r\n", []),
    ("backspace DEL", b"lx\x7fs\r", ["ls"]),
    ("backspace Ctrl-H", b"lx\x08s\r", ["ls"]),
    ("Ctrl-U kills the line", b"rm -rf /\x15echo safe\r", ["echo safe"]),
    ("Ctrl-U kills before the cursor", b"xx ls" + LEFT * 2 + b"\x15\r", ["ls"]),
    ("Ctrl-W kills a word", b"echo one two\x17three\r", ["echo one three"]),
    ("Ctrl-K kills to the end", b"echo hi there\x01" + b"\x06" * 4 + b"\x0b\r", ["echo"]),
    ("Ctrl-A inserts at the start", b"cho\x01e\r", ["echo"]),
    ("Ctrl-A and Ctrl-E", b"cat file\x01sudo \x05 | less\r", ["sudo cat file | less"]),
    ("Ctrl-B and Ctrl-F", b"ecoh\x02\x02h\x06\x04\r", ["echo"]),
    ("left arrow inserts", b"echo wrld" + LEFT * 3 + b"o\r", ["echo world"]),
    ("left arrow SS3", b"echo wrld\x1bOD\x1bOD\x1bODo\r", ["echo world"]),
    ("right arrow", b"ac" + LEFT * 2 + RIGHT + b"b\r", ["abc"]),
    ("left stops at the start", b"s" + LEFT * 5 + b"l\r", ["ls"]),
    ("Home and End", b"s\x1b[Hl\x1b[F -a\r", ["ls -a"]),
    ("Home and End as ~ keys", b"s\x1b[1~l\x1b[4~ -a\r", ["ls -a"]),
    ("Home and End SS3", b"s\x1bOHl\x1bOF -a\r", ["ls -a"]),
    ("Delete key", b"lss" + LEFT + b"\x1b[3~\r", ["ls"]),
    ("Ctrl-D deletes forward", b"lsx\x02\x04\r", ["ls"]),
    ("Ctrl-D on an empty line", b"\x04", []),
    ("Alt-B and Alt-D", b"echo one two\x1bb\x1bdthree\r", ["echo one three"]),
    ("Alt-F", b"echo one two\x01\x1bf\x1bf!\r", ["echo one! two"]),
    ("Alt-Backspace", b"echo one two\x1b\x7f\r", ["echo one"]),
    ("Ctrl-Left", b"echo two\x1b[1;5Done \r", ["echo one two"]),
    ("Ctrl-C drops the line", b"rm -rf /\x03ls\r", ["ls"]),
    ("Ctrl-L is no text", b"l\x0cs\r", ["ls"]),
    ("unknown escapes are no text", b"l\x1b[15~\x1b[?25hs\r", ["ls"]),
    ("UTF-8", "echo h\u00e9llo \u2603\r".encode(), ["echo h\u00e9llo \u2603"]),
    ("backslash continues", b"echo a \\\r  b\r", ["echo a   b"]),
    ("open quote continues", b"echo 'a\rb'\r", ["echo 'a\nb'"]),
    ("open double quote continues", b'echo "a\r\\"b"\r', ['echo "a\n\\"b"']),
    ("escaped backslash ends", b"echo \\\\\r", ["echo \\\\"]),
    ("backslash in single quotes", b"echo 'a\\\rb'\r", ["echo 'a\\\nb'"]),
    ("a pipe continues", b"ls |\rwc -l\r", ["ls | wc -l"]),
    (
        "a list continues",
        b"make &&\rmake install ||\recho failed\r",
        ["make && make install || echo failed"],
    ),
    ("a quoted pipe ends", b"echo '|'\r", ["echo '|'"]),
    ("Ctrl-C drops a continuation", b"echo 'a\r\x03ls\r", ["ls"]),
    ("bracketed paste", b"\x1b[200~echo 'a\nb'\x1b[201~\r", ["echo 'a\nb'"]),
    ("paste is literal", b"\x1b[200~ls \x15-l\x1b[D\x1b[201~\r", ["ls -l"]),
    ("paste inserts at the cursor", b"ls /" + LEFT + b"\x1b[200~-a \x1b[201~\r", ["ls -a /"]),
    ("paste CRLF", b"\x1b[200~a\r\nb\x1b[201~\r", ["a\nb"]),
    ("up arrow recalls", b"ls\x1b[A\r", [H]),
    ("up arrow SS3", b"\x1bOA\r", [H]),
    ("recalled then edited", b"\x1b[A --verbose\r", [H + " --verbose"]),
    ("recalled keeps its mark", b"\x1b[A\x7f\x7fx\r", [H + "x"]),
    ("recalled after Ctrl-A", b"\x10\x01sudo \r", ["sudo " + H]),
    ("Ctrl-N", b"\x0e\r", [H]),
    ("Ctrl-R search", b"\x12ssh\r", [H]),
    ("Ctrl-R then edit", b"\x12ssh" + RIGHT + b" -v\r", [H + " -v"]),
    ("Ctrl-R given up", b"echo a\x12xx\x07b\r", ["echo ab"]),
    ("Ctrl-R found nothing", b"echo a\x12\r", ["echo a"]),
    ("Ctrl-C in a search", b"rm\x12xx\x03ls\r", ["ls"]),
    ("tab completion", b"cat /et\t\r", ["cat /et" + T]),
    ("tab twice then more", b"cd /u\t\tlocal\r", ["cd /u" + T + T + "local"]),
]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [pytest.param(keys, expected, id=name) for name, keys, expected in KEY_SEQUENCES],
)
def test_real_key_sequences(keys: bytes, expected: list[str]) -> None:
    assert commands_of(keys) == expected


def test_commands_say_what_the_shell_inserted() -> None:
    extractor = CommandExtractor()
    typed, recalled, completed = extractor.feed(b"ls\r\x1b[A\rcat /e\t\r", 2.5)
    assert typed == TypedCommand(2.5, "ls")
    assert recalled == TypedCommand(2.5, H, from_history=True)
    assert completed == TypedCommand(2.5, "cat /e" + T, completed=True)
    assert extractor.feed(b"pwd\r", 3.0) == [TypedCommand(3.0, "pwd")]


def test_a_command_keeps_the_time_enter_was_pressed() -> None:
    extractor = CommandExtractor()
    assert extractor.feed(b"echo ", 1.0) == []
    (command,) = extractor.feed(b"hi\r", 4.25)
    assert command.to_record().time == 4.25
    assert command.to_record().command == "echo hi"


def test_secret_input_is_dropped_with_the_line_before_it() -> None:
    extractor = CommandExtractor()
    extractor.feed(b"sudo -", 1.0)
    assert extractor.feed(b"hunter2\r", 2.0, secret=True) == []
    assert extractor.feed(b"ls\r", 3.0) == [TypedCommand(3.0, "ls")]


def test_keys_for_a_full_screen_program_are_no_commands() -> None:
    extractor = CommandExtractor()
    assert extractor.feed(b"iHello\x1b:wq\r", 1.0, suspended=True) == []
    assert commands_of(b"ls\r") == ["ls"]


def test_overlong_lines_are_cut_and_marked() -> None:
    (command,) = commands_of(b"x" * (MAX_COMMAND_CHARS + 100) + b"\r")
    assert command == "x" * MAX_COMMAND_CHARS + "\u2026"


def test_a_password_prompt_is_told_from_a_line_editor() -> None:
    # A real pseudo-terminal: the agent reads the slave's modes through the master it holds.
    master, slave = os.openpty()
    try:
        attributes = termios.tcgetattr(slave)
        lflag = attributes[3]
        modes = {
            "cooked": (lflag | termios.ICANON | termios.ECHO, False),
            "password": ((lflag | termios.ICANON) & ~termios.ECHO, True),
            "readline": lflag & ~termios.ICANON & ~termios.ECHO,
        }
        for name, mode in modes.items():
            flags, secret = mode if isinstance(mode, tuple) else (mode, False)
            attributes[3] = flags
            termios.tcsetattr(slave, termios.TCSANOW, attributes)
            assert reads_secret(master) is secret, name
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize(
    ("output", "active"),
    [
        ([b"\x1b[?1049h"], True),
        ([b"text\x1b[?10", b"49hmore"], True),
        ([b"\x1b[?1049h", b"vim", b"\x1b[?1049l$ "], False),
        ([b"\x1b[?47h\x1b[?47l\x1b[?1047h"], True),
        ([b"\x1b[?25h plain output"], False),
    ],
)
def test_alternate_screen_is_followed(output: list[bytes], active: bool) -> None:
    tracker = AlternateScreenTracker()
    for data in output:
        tracker.feed_output(data)
    assert tracker.active is active


KEYS = st.sampled_from(
    [
        b"a",
        b"b",
        b" ",
        b"'",
        b'"',
        b"\\",
        "\u00e9".encode(),
        "\u2603".encode(),
        b"\r",
        b"\x7f",
        b"\x03",
        b"\x15",
        b"\x17",
        b"\x0b",
        b"\x01",
        b"\x05",
        b"\x04",
        b"\x12",
        b"\x07",
        b"\t",
        LEFT,
        RIGHT,
        UP,
        b"\x1bOD",
        b"\x1b[3~",
        b"\x1b[1;5D",
        b"\x1bb",
        b"\x1b[200~",
        b"\x1b[201~",
        b"\x1b",
        b"\xff",
    ]
)
KEY_STREAMS = st.lists(KEYS, max_size=60).map(b"".join)


def pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[start:cut]
        start = cut
    yield data[start:]


@settings(max_examples=300, deadline=None)
@given(keys=KEY_STREAMS, cuts=st.lists(st.integers(0, 1000), max_size=8))
def test_reads_may_split_the_input_anywhere(keys: bytes, cuts: list[int]) -> None:
    whole = CommandExtractor().feed(keys, 1.0)
    extractor = CommandExtractor()
    split = [command for piece in pieces(keys, cuts) for command in extractor.feed(piece, 1.0)]
    assert split == whole


@settings(max_examples=300, deadline=None)
@given(keys=st.binary(max_size=300))
def test_any_input_gives_printable_bounded_commands(keys: bytes) -> None:
    for command in CommandExtractor().feed(keys + b"\x03", 1.0):
        assert command.command == command.command.strip()
        assert 0 < len(command.command) <= MAX_COMMAND_CHARS + 1
        assert all(unicodedata.category(c)[0] != "C" or c in "\n\t" for c in command.command)


PLAIN = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "Zs"], include_characters="-_./|&;$=*"),
    min_size=1,
    max_size=80,
).filter(lambda text: text.strip() != "" and not text.rstrip().endswith(("|", "&&")))


@settings(max_examples=200, deadline=None)
@given(text=PLAIN)
def test_plain_typing_is_kept_exactly(text: str) -> None:
    assert commands_of(text.encode() + b"\r") == [text.strip()]


@settings(max_examples=200, deadline=None)
@given(text=PLAIN, data=st.data())
def test_inserting_after_moving_left_matches_a_string_insert(
    text: str, data: st.DataObject
) -> None:
    back = data.draw(st.integers(0, len(text)))
    expected = (text[: len(text) - back] + "Z" + text[len(text) - back :]).strip()
    assert commands_of(text.encode() + LEFT * back + b"Z\r") == [expected]


@settings(max_examples=200, deadline=None)
@given(before=PLAIN, after=PLAIN)
def test_ctrl_u_and_ctrl_c_forget_what_came_before(before: str, after: str) -> None:
    assert commands_of(before.encode() + b"\x15" + after.encode() + b"\r") == [after.strip()]
    assert commands_of(before.encode() + b"\x03" + after.encode() + b"\r") == [after.strip()]
