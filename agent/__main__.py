"""`python -m agent`: the same command as `mrzap-agent`."""

from __future__ import annotations

from agent.cli import main

if __name__ == "__main__":
    main(prog_name="mrzap-agent")
