"""The command log: the commands a user types in a shell, read from the keystrokes (PROTOCOL.md §8).

The agent sees only the bytes the user sends to the terminal, not the shell's own line buffer, so
`CommandExtractor` replays the usual line editing (readline and zle emacs keys) on a model of the
line: printable text and bracketed paste insert at the cursor; backspace, Delete, Ctrl-U, Ctrl-K,
Ctrl-W and Alt-Backspace delete; arrows, Home/End, Ctrl-A/E/B/F and Alt-B/F move; Ctrl-C drops the
line; Enter ends it, unless the line continues (a trailing backslash, an open quote, or a trailing
`|`, `&&` or `||`), when the next line is joined to it.

What the shell inserts by itself cannot be known from the keystrokes: text recalled from history
(Up, Down, Ctrl-P/N, Ctrl-R) shows as HISTORY_MARK and text completed with Tab as COMPLETION_MARK,
at the place where it went, and the command says so (`from_history`, `completed`).

Typing that is not a shell command must not land in the log: while a full-screen program holds the
alternate screen (`AlternateScreenTracker`, fed the output) and while the terminal reads a password
(canonical mode without echo, `reads_secret`), the caller feeds keystrokes with `secret=True` or
`suspended=True` and they are dropped. The commands go into the signed recording chunks
(`CommandRecord`), so they are signed and hash-chained like the rest of the recording.
"""

from __future__ import annotations

import codecs
import dataclasses
import re
import termios
import unicodedata

from bastion.mrzap.v1 import mrzap_pb2

__all__ = [
    "COMPLETION_MARK",
    "HISTORY_MARK",
    "MAX_COMMAND_CHARS",
    "AlternateScreenTracker",
    "CommandExtractor",
    "TypedCommand",
    "reads_secret",
]

HISTORY_MARK = "\u27e8history\u27e9"
"""Stands for text the shell recalled from its history, which the agent cannot see."""

COMPLETION_MARK = "\u27e8tab\u27e9"
"""Stands for text the shell completed after Tab, which the agent cannot see."""

MAX_COMMAND_CHARS = 16 * 1024
"""Longer command lines are cut here (and end with TRUNCATED_MARK) so memory stays bounded."""

TRUNCATED_MARK = "\u2026"

_PASTE_END = "\x1b[201~"
_KEYPAD_ENTER = "\x1bOM"
_CSI = re.compile(r"\x1b\[([0-9;?]*)[ -/]*([@-~])")
_CSI_PREFIX = re.compile(r"\x1b(\[[0-9;?]*[ -/]*)?\Z")
_SS3 = re.compile(r"\x1bO([@-~])")
_MAX_ESCAPE_CHARS = 32


@dataclasses.dataclass(frozen=True)
class TypedCommand:
    """One command the user entered."""

    time: float
    """Seconds since the session started, when Enter was pressed."""

    command: str
    """The command line, continuation lines joined, with marks for what the shell inserted."""

    from_history: bool = False
    """Part of the line was recalled from the shell's history."""

    completed: bool = False
    """Part of the line was completed by the shell after Tab."""

    def to_record(self) -> mrzap_pb2.CommandRecord:
        """The wire form that the recording chunk carries."""
        return mrzap_pb2.CommandRecord(time=self.time, command=self.command)


def reads_secret(pty_master_fd: int) -> bool:
    """Whether the terminal is reading a password: canonical input with echo off.

    Line editors (readline, zle) also turn echo off, but they read keys one by one
    (non-canonical), so this does not mistake a shell prompt for a password prompt.
    """
    lflag = termios.tcgetattr(pty_master_fd)[3]
    return bool(lflag & termios.ICANON) and not lflag & termios.ECHO


class AlternateScreenTracker:
    """Follows the terminal output to know when a full-screen program (vim, less, top) runs."""

    _SWITCH = re.compile(rb"\x1b\[\?(?:1049|1047|47)([hl])")
    _TAIL = 8

    def __init__(self) -> None:
        self.active = False
        """Whether the alternate screen is shown now."""
        self._tail = b""

    def feed_output(self, data: bytes) -> bool:
        """Account for output the program wrote; returns `active` afterwards."""
        # Keep a few bytes so a switch split across two reads is still seen.
        window = self._tail + data
        for match in self._SWITCH.finditer(window):
            self.active = match.group(1) == b"h"
        self._tail = window[-self._TAIL :]
        last_esc = self._tail.rfind(b"\x1b")
        self._tail = self._tail[last_esc:] if last_esc >= 0 else b""
        return self.active


@dataclasses.dataclass
class _Line:
    """The line being edited: cells (characters or one mark each) and the cursor."""

    cells: list[str] = dataclasses.field(default_factory=list)
    cursor: int = 0
    truncated: bool = False

    def insert(self, text: str) -> None:
        room = MAX_COMMAND_CHARS - len(self.cells)
        if len(text) > room:
            text = text[: max(room, 0)]
            self.truncated = True
        self.cells[self.cursor : self.cursor] = list(text)
        self.cursor += len(text)

    def insert_mark(self, mark: str) -> None:
        if len(self.cells) < MAX_COMMAND_CHARS:
            self.cells.insert(self.cursor, mark)
            self.cursor += 1

    def replace_with(self, mark: str) -> None:
        self.cells = [mark]
        self.cursor = 1

    def delete(self, start: int, end: int) -> None:
        start, end = max(start, 0), min(end, len(self.cells))
        if start >= end:
            return
        # A mark stands for unknown text; deleting part of that text leaves the mark.
        kept = [c for c in self.cells[start:end] if c in (HISTORY_MARK, COMPLETION_MARK)]
        self.cells[start:end] = kept
        self.cursor = start + len(kept) if self.cursor >= end else min(self.cursor, start)

    def word_start(self) -> int:
        position = self.cursor
        while position > 0 and self.cells[position - 1].isspace():
            position -= 1
        while position > 0 and not self.cells[position - 1].isspace():
            position -= 1
        return position

    def word_end(self) -> int:
        position = self.cursor
        while position < len(self.cells) and self.cells[position].isspace():
            position += 1
        while position < len(self.cells) and not self.cells[position].isspace():
            position += 1
        return position

    def text(self) -> str:
        return "".join(self.cells) + (TRUNCATED_MARK if self.truncated else "")


class CommandExtractor:
    """Turns the keystrokes of one shell session into the commands entered, in order.

    `feed` takes the bytes exactly as the client sent them, in any pieces: escape sequences and
    UTF-8 characters split across two reads are put back together.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = _Line()
        self._continued = ""
        self._history = False
        self._completed = False
        self._pasting = False
        self._before_search: _Line | None = None
        self._found = False
        self._pending = ""

    def feed(
        self, data: bytes, time: float, *, secret: bool = False, suspended: bool = False
    ) -> list[TypedCommand]:
        """Account for keystrokes typed at `time`; returns the commands they completed.

        `secret` (a password is being read) and `suspended` (a full-screen program runs) drop the
        keystrokes and the line typed so far, which cannot be a command any more.
        """
        text = self._pending + self._decoder.decode(data)
        self._pending = ""
        if secret or suspended:
            self._reset()
            return []
        commands: list[TypedCommand] = []
        position = 0
        while position < len(text):
            if self._pasting:
                position = self._paste(text, position)
                continue
            char = text[position]
            if char != "\x1b":
                self._key(char, time, commands)
                position += 1
                continue
            if text.startswith(_KEYPAD_ENTER, position):
                self._key("\r", time, commands)
                position += len(_KEYPAD_ENTER)
                continue
            consumed = self._escape(text, position)
            if consumed == 0:
                # An escape sequence cut by the read: keep it for the next piece.
                self._pending = text[position:]
                break
            position += consumed
        return commands

    def _paste(self, text: str, position: int) -> int:
        end = text.find(_PASTE_END, position)
        if end >= 0:
            self._insert(text[position:end])
            self._pasting = False
            return end + len(_PASTE_END)
        pasted = text[position:]
        # An escape sequence (maybe the end marker) may be cut by the read: hold it back.
        cut = pasted.rfind("\x1b", max(len(pasted) - _MAX_ESCAPE_CHARS, 0))
        if cut >= 0 and _CSI_PREFIX.match(pasted, cut):
            self._pending = pasted[cut:]
            pasted = pasted[:cut]
        self._insert(pasted)
        return len(text)

    def _insert(self, text: str) -> None:
        # Pasted text is literal: line breaks stay in the command, other controls are dropped.
        text = _CSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
        self._line.insert("".join(c for c in text if c in "\n\t" or _is_text(c)))

    def _escape(self, text: str, position: int) -> int:
        """Handle the escape sequence at `position`; returns its length, 0 if it is cut short."""
        rest = text[position : position + _MAX_ESCAPE_CHARS]
        csi = _CSI.match(rest)
        if csi:
            self._csi(csi.group(1), csi.group(2))
            return csi.end()
        ss3 = _SS3.match(rest)
        if ss3:
            self._csi("", ss3.group(1))
            return ss3.end()
        if _CSI_PREFIX.match(rest) or rest == "\x1bO":
            return 0 if len(rest) < _MAX_ESCAPE_CHARS else len(rest)
        self._alt(rest[1])
        return 2

    def _csi(self, params: str, final: str) -> None:
        line = self._line
        if self._before_search is not None:
            self._end_search()  # any movement leaves the search with the found line to edit
        word = params.endswith((";3", ";5"))  # Alt- or Ctrl-arrow moves by words
        if final in "AB":
            self._recall()
        elif final == "C":
            line.cursor = line.word_end() if word else min(line.cursor + 1, len(line.cells))
        elif final == "D":
            line.cursor = line.word_start() if word else max(line.cursor - 1, 0)
        elif final == "H":
            line.cursor = 0
        elif final == "F":
            line.cursor = len(line.cells)
        elif final == "~":
            self._tilde(params)

    def _tilde(self, params: str) -> None:
        line = self._line
        code = params.split(";")[0]
        if code in ("1", "7"):
            line.cursor = 0
        elif code in ("4", "8"):
            line.cursor = len(line.cells)
        elif code == "3":
            line.delete(line.cursor, line.cursor + 1)
        elif code == "200":
            self._pasting = True

    def _alt(self, key: str) -> None:
        line = self._line
        if key == "b":
            line.cursor = line.word_start()
        elif key == "f":
            line.cursor = line.word_end()
        elif key == "d":
            line.delete(line.cursor, line.word_end())
        elif key in "\x7f\x08":
            line.delete(line.word_start(), line.cursor)

    def _recall(self) -> None:
        self._line.replace_with(HISTORY_MARK)
        self._history = True

    def _key(self, char: str, time: float, commands: list[TypedCommand]) -> None:
        line = self._line
        if self._before_search is not None:
            self._search_key(char, time, commands)
        elif char in "\r\n":
            self._enter(time, commands)
        elif char == "\x03":  # Ctrl-C
            self._reset()
        elif char in "\x7f\x08":
            line.delete(line.cursor - 1, line.cursor)
        elif char == "\x04":  # Ctrl-D: end of input on an empty line, else delete forward
            line.delete(line.cursor, line.cursor + 1)
        elif char == "\x01":
            line.cursor = 0
        elif char == "\x05":
            line.cursor = len(line.cells)
        elif char == "\x02":
            line.cursor = max(line.cursor - 1, 0)
        elif char == "\x06":
            line.cursor = min(line.cursor + 1, len(line.cells))
        elif char == "\x15":  # Ctrl-U
            line.delete(0, line.cursor)
        elif char == "\x0b":  # Ctrl-K
            line.delete(line.cursor, len(line.cells))
        elif char == "\x17":  # Ctrl-W
            line.delete(line.word_start(), line.cursor)
        elif char in "\x10\x0e":  # Ctrl-P, Ctrl-N
            self._recall()
        elif char == "\x12":  # Ctrl-R
            self._before_search = dataclasses.replace(line, cells=list(line.cells))
        elif char == "\t":
            line.insert_mark(COMPLETION_MARK)
            self._completed = True
        elif _is_text(char):
            line.insert(char)

    def _search_key(self, char: str, time: float, commands: list[TypedCommand]) -> None:
        # Incremental history search: the query is typed, the shell shows a line we cannot see.
        if char in "\r\n":
            self._end_search()
            self._enter(time, commands)
        elif char == "\x07":  # Ctrl-G gives the search up and restores the line
            if self._before_search is not None:
                self._line = self._before_search
            self._before_search = None
        elif char == "\x03":
            self._reset()
        elif _is_text(char) or char in "\x12\x7f\x08":
            self._found = True

    def _end_search(self) -> None:
        """Leave the search with the line it found, if any, to run or edit."""
        if self._found:
            self._recall()
        self._before_search = None
        self._found = False

    def _enter(self, time: float, commands: list[TypedCommand]) -> None:
        text = self._continued + self._line.text()
        self._line = _Line()
        # Marks stand for unknown text, so quotes cannot be counted on a line that has them.
        continuation = "" if self._history or self._completed else _continuation(text)
        if continuation == "escape":
            self._continued = text[:-1]
            return
        if continuation == "quote":
            self._continued = text + "\n"
            return
        if continuation == "operator":
            self._continued = text.rstrip() + " "
            return
        command = text.strip()
        if command:
            commands.append(TypedCommand(time, command, self._history, self._completed))
        self._reset()

    def _reset(self) -> None:
        self._line = _Line()
        self._continued = ""
        self._history = self._completed = self._pasting = self._found = False
        self._before_search = None


def _is_text(char: str) -> bool:
    """Whether `char` is text a key inserts (any character but controls and the like)."""
    return unicodedata.category(char)[0] != "C"


def _continuation(text: str) -> str:
    """Why a shell would read another line for `text`: "escape", "quote", "operator" or "".

    A backslash before the line break joins the lines (outside single quotes); an open quote keeps
    the line break inside the command; a line ending with `|`, `&&` or `||` waits for the rest
    of the pipeline or list, which joins it after a space.
    """
    quote = ""
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
    if escaped:
        return "escape"
    if quote:
        return "quote"
    return "operator" if text.rstrip().endswith(("|", "&&")) else ""
