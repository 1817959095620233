"""The target-side daemon `mrzap-agent`.

It registers once, then keeps one outbound control stream to a broker (PROTOCOL.md section 7),
verifies every SYN itself against both roots of trust (section 5) and runs the granted action.
"""

from __future__ import annotations

__all__: list[str] = []
