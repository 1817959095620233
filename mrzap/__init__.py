"""The MrZAP protocol core and shared plumbing (PROTOCOL.md).

Pure code with network access only behind small interfaces (the JWKS source). Data flows:

- `keys`, `envelope`: Ed25519 keys and domain-separated Signed envelopes (sections 1-2);
- `pktoken`, `jwks`: the IdP root — PK tokens verified against the issuer's JWKS (section 3);
- `grant`: the service root — grants signed by a service key (section 4);
- `handshake`, `replay`, `revocation`: SYN / SYN-ACK / Reject, checked in the order of section 5,
  with the replay cache and revocations the agent enforces;
- `channel`: channel keys and AES-256-GCM frames in strict sequence (sections 5-6);
- `errors`, `verification`, `config`, `clock`: the error hierarchy with gRPC codes, reason codes,
  validated configuration and the time source.

Service roles, the agent and zli build on these modules; none of them re-implements a check.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
