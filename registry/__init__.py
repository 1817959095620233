"""The registry role: organisations, environments, targets, registration and API keys.

Agents register here with an activation token and receive their target id, the pinned service
keys and the IdP configuration; the registry tracks each target's lifecycle state.
"""

from __future__ import annotations

__all__: list[str] = []
