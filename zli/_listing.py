"""What zli's `list` commands share: reading a paged list (the first page, or every page when
asked) and printing it as JSON, as "No things.", or as a table with a note when pages were left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import click
from google.protobuf.message import Message

from ._format import to_json
from ._resolve import all_pages

__all__ = ["echo_list", "pages"]

_Item = TypeVar("_Item")
_Msg = TypeVar("_Msg", bound=Message)


def pages(
    fetch: Callable[[str], tuple[Sequence[_Item], str]], every: bool
) -> tuple[list[_Item], bool]:
    """The items of a paged list and whether pages were left unread.

    `fetch(page_token)` returns a page and the next token ("" after the last page). Without
    `every` only the first page is read.
    """
    if every:
        return list(all_pages(fetch)), False
    items, token = fetch("")
    return list(items), bool(token)


def echo_list(
    items: Sequence[_Msg],
    *,
    as_json: bool,
    empty: str,
    render: Callable[[Sequence[_Msg]], str],
    more: str | None = None,
) -> None:
    """Print `items` as JSON, or `empty` when there are none, or `render(items)`; then `more`
    (what to add for every page) on stderr when given. `render` runs only for a table, so the
    lookups it needs (target names...) are made only then."""
    if as_json:
        click.echo(to_json(items))
        return
    if not items:
        click.echo(empty)
        return
    click.echo(render(items))
    if more is not None:
        click.echo(more, err=True)
