"""The policy role: typed policies compiled to Rego data, decisions with reasons, and grant signing.

Every RPC and every connection request is decided here; an allowed connection gets a grant signed
with the organisation's service grant key (PROTOCOL.md section 4), which only this role holds.
"""

from __future__ import annotations

__all__: list[str] = []
