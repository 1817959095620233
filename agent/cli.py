"""The `mrzap-agent` command line."""

from __future__ import annotations

import click

from mrzap import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mrzap-agent")
def main() -> None:
    """mrzap target agent: registers once, then keeps one outbound stream to the service."""
