"""The `mrzapd` process: composes the service roles (auth, registry, policy, broker, audit).

`mrzapd up` is the embedded default, `mrzapd serve --role ...` runs chosen roles, and
`mrzapd idp` runs the development identity provider. Roles live in their own packages; this
package only parses the command line and wires them together.
"""

from __future__ import annotations

__all__: list[str] = []
