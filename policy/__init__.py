"""The policy role: typed policies compiled to Rego data, decisions with reasons, and grant signing.

Every RPC and every connection request is decided here; an allowed connection gets a grant signed
with the organisation's service grant key (PROTOCOL.md section 4), which only this role holds.

`GrantKeyring` holds those keys: loaded from the data directory (the first one is created on first
start), the newest one signing; the registry hands their public halves (`GrantKey`) to agents at
registration, and agents accept grants signed by no other key.
"""

from __future__ import annotations

from ._grant_keys import GrantKey, GrantKeyring

__all__ = ["GrantKey", "GrantKeyring"]
