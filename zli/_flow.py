"""Credit-based flow control of a channel, client side (PROTOCOL.md section 6).

Each direction starts with `DEFAULT_WINDOW` bytes of credit. zli may send only as much stdin as
the agent granted (`SendCredit`), and grants the agent more output credit as it writes the output
out (`ReceiveWindow`), half a window at a time so one update covers many frames. The agent ends a
channel whose client overruns its credit, and stops reading its process when zli grants none, so a
slow terminal or pipe slows the remote process instead of filling memory anywhere on the way.
"""

from __future__ import annotations

import asyncio

__all__ = ["DEFAULT_WINDOW", "ReceiveWindow", "SendCredit"]

#: The initial credit of each direction (PROTOCOL.md section 6; agent/_channels.py agrees).
DEFAULT_WINDOW = 256 * 1024


class SendCredit:
    """Bytes of stdin the agent still accepts; `take` waits while there are none."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._credit = window
        self._changed = asyncio.Event()

    @property
    def available(self) -> int:
        """Bytes that may be sent right now."""
        return self._credit

    def grant(self, count: int) -> None:
        """The agent's window update: `count` more bytes may be sent."""
        self._credit += count
        self._changed.set()

    async def wait(self) -> int:
        """The credit, once there is some."""
        while self._credit <= 0:
            self._changed.clear()
            await self._changed.wait()
        return self._credit

    def spend(self, count: int) -> None:
        """`count` bytes were sent; never more than the credit (that would end the channel)."""
        if count > self._credit:
            raise ValueError(f"sending {count} bytes with a credit of {self._credit}")
        self._credit -= count


class ReceiveWindow:
    """Output the agent may still send; says when to grant it more."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._window = window
        self._outstanding = window  # credit the agent holds now
        self._consumed = 0  # bytes written out since the last update

    def received(self, count: int) -> None:
        """The agent sent `count` bytes of output; it may not send more than it was granted."""
        self._outstanding -= count
        if self._outstanding < 0:
            raise ValueError("the agent sent more output than its credit allows")

    def consumed(self, count: int) -> int:
        """`count` bytes were written out; the credit to grant now, or 0 to wait for more."""
        self._consumed += count
        if self._consumed < self._window // 2:
            return 0
        granted, self._consumed = self._consumed, 0
        self._outstanding += granted
        return granted
