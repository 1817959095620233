"""`zli`, the command-line client for users and administrators.

It logs in with a PK token (PROTOCOL.md section 3), asks the service for grants, and speaks the
handshake and encrypted channel to agents through the broker.
"""

from __future__ import annotations

__all__: list[str] = []
