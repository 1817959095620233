"""The options of the `zli` group that every command shares, and the client they lead to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ._client import Client, anonymous, connect
from ._state import StateDir

__all__ = ["ZliContext", "anonymous_client", "client", "state_dir"]


@dataclasses.dataclass(frozen=True)
class ZliContext:
    """What `zli [OPTIONS] COMMAND` was given before the command."""

    config_dir: Path | None
    """Where zli keeps its session key and tokens; None for the default."""

    server: str = ""
    """The service named on the command line, for API keys; empty if not named."""

    ca_file: str = ""
    """The service's CA certificate named on the command line; empty if not named."""


def _options(ctx: click.Context) -> ZliContext:
    found = ctx.find_object(ZliContext)
    return found if found is not None else ZliContext(None)


def state_dir(ctx: click.Context) -> StateDir:
    """zli's config directory."""
    return StateDir(_options(ctx).config_dir)


def client(ctx: click.Context) -> Client:
    """A client calling as `$MRZAP_API_KEY`, else as the logged-in user."""
    options = _options(ctx)
    return connect(StateDir(options.config_dir), options.server, options.ca_file)


def anonymous_client(ctx: click.Context) -> Client:
    """A client calling without credentials, for requests that carry their own secret."""
    options = _options(ctx)
    return anonymous(StateDir(options.config_dir), options.server, options.ca_file)
