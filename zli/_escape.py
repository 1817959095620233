"""The escape sequences of `zli connect`, read from what the user types (like ssh's `~`).

After a newline (or at the very start), `~` is held back and the next byte decides:

- `~.` detaches: the shell keeps running on the target for `zli connections attach`;
- `~?` shows the escapes;
- `~~` sends one `~`;
- `~` followed by anything else sends both bytes unchanged.

The scanner only splits the typed bytes into what goes to the shell and the escapes between.
"""

from __future__ import annotations

import enum

__all__ = ["HELP", "Escape", "EscapeScanner"]

_TILDE = ord("~")
_NEWLINES = (ord("\r"), ord("\n"))

HELP = (
    "Supported escape sequences (after a newline):\r\n"
    "  ~.  detach (the shell keeps running; `zli connections attach ID` returns)\r\n"
    "  ~?  this help\r\n"
    "  ~~  send a literal ~\r\n"
)


class Escape(enum.Enum):
    """What an escape sequence asks for."""

    DETACH = "."
    HELP = "?"


class EscapeScanner:
    """Finds escape sequences in the bytes typed, across reads."""

    def __init__(self) -> None:
        self._at_line_start = True
        self._held_tilde = False

    def feed(self, data: bytes) -> list[bytes | Escape]:
        """`data` split into bytes to send and the escapes between them, in order."""
        parts: list[bytes | Escape] = []
        out = bytearray()
        for byte in data:
            if self._held_tilde:
                self._held_tilde = False
                if byte in (ord("."), ord("?")):
                    if out:
                        parts.append(bytes(out))
                        out.clear()
                    parts.append(Escape(chr(byte)))
                    # Still at the start of the line: nothing was sent since the newline.
                    continue
                out.append(_TILDE)
                if byte == _TILDE:
                    self._at_line_start = False
                    continue
            elif self._at_line_start and byte == _TILDE:
                self._held_tilde = True
                continue
            out.append(byte)
            self._at_line_start = byte in _NEWLINES
        if out:
            parts.append(bytes(out))
        return parts
