"""Paging for list RPCs (AIP-158): opaque page tokens (a key-set cursor, base64url-encoded) and
the page size a request gets."""

from __future__ import annotations

import base64
import json

from .errors import InvalidArgument

__all__ = [
    "decode_page_token",
    "decode_time_token",
    "encode_page_token",
    "encode_time_token",
    "page_limit",
]


def encode_page_token(cursor: tuple[str, str]) -> str:
    """The token that continues after `cursor` (the sort key of a page's last item)."""
    return base64.urlsafe_b64encode(json.dumps(list(cursor)).encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str, str] | None:
    """The cursor in `token`, None for the first page; InvalidArgument if it is not ours."""
    if not token:
        return None
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        raise InvalidArgument("the page token is not valid") from None
    if not (
        isinstance(cursor, list) and len(cursor) == 2 and all(isinstance(c, str) for c in cursor)
    ):
        raise InvalidArgument("the page token is not valid")
    return cursor[0], cursor[1]


def encode_time_token(time: float, key: str) -> str:
    """The token that continues after an item sorted by (time, key), newest first lists."""
    # repr keeps every bit of the float, so the next page starts exactly after this item.
    return encode_page_token((repr(time), key))


def decode_time_token(token: str) -> tuple[float, str] | None:
    """The (time, key) cursor `encode_time_token` made, None for the first page; InvalidArgument
    if it is not ours."""
    cursor = decode_page_token(token)
    if cursor is None:
        return None
    try:
        return float(cursor[0]), cursor[1]
    except ValueError:
        raise InvalidArgument("the page token is not valid") from None


def page_limit(page_size: int, default: int, maximum: int) -> int:
    """How many items a request's `page_size` asks for: `default` for 0, at most `maximum`;
    InvalidArgument if it is negative."""
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(page_size or default, maximum)
