"""The broker role: connection set-up and the relay between client channels and agent streams.

It asks the policy role for grants, carries SYN, SYN-ACK and encrypted frames between zli and the
agent's outbound control stream (PROTOCOL.md sections 5-7), and can neither read nor alter them.
"""

from __future__ import annotations

__all__: list[str] = []
