"""`python -m idp`: the same command as `mrzapd idp`."""

from __future__ import annotations

from idp.cli import idp_command

if __name__ == "__main__":
    idp_command(prog_name="python -m idp")
