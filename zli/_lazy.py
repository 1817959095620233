"""A click group whose subcommands are imported only when they are used.

`zli exec` runs once per remote command, in scripts too, so its start-up counts: importing every
subcommand's module (policy YAML, OIDC login, recordings, ...) costs about a tenth of a second
that `zli exec` never uses. `LazyGroup` knows each subcommand by name and where it lives, and
imports that module when the command is run. `zli --help` still lists every command: listing
imports them all, which is fine for help.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

import click

__all__ = ["LazyCommand", "LazyGroup"]


class LazyCommand:
    """Where a subcommand lives: `module:attribute`, and what to do once it is imported."""

    def __init__(self, path: str, then: Callable[[click.Command], None] | None = None) -> None:
        """`path` is `package.module:attribute`; `then` is called once with the command
        (to add a subcommand defined elsewhere, for example)."""
        self.path = path
        self._then = then
        self._command: click.Command | None = None

    def load(self) -> click.Command:
        """The command, imported on first use."""
        if self._command is None:
            module_name, _, attribute = self.path.partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.path} is not a click command")
            if self._then is not None:
                self._then(command)
            self._command = command
        return self._command


class LazyGroup(click.Group):
    """A group with eager commands (added as usual) and lazy ones (`lazy_commands`)."""

    def __init__(
        self,
        *args: object,
        lazy_commands: Mapping[str, LazyCommand] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy_commands = dict(lazy_commands or {})
        """Subcommands by name, imported when first looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command's name, eager and lazy, sorted (as `--help` shows them)."""
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command named `cmd_name`, importing its module if it is a lazy one."""
        lazy = self.lazy_commands.get(cmd_name)
        if lazy is not None:
            return lazy.load()
        return super().get_command(ctx, cmd_name)
