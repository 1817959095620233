"""The `zli` command line."""

from __future__ import annotations

import click

from mrzap import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zli")
def main() -> None:
    """mrzap command-line client: log in, then reach targets through the service."""
