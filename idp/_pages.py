"""The two HTML pages of the IdP: the login form and the error page. Everything is escaped."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

__all__ = ["error_page", "login_page"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}"
    "label{display:block;margin:.75rem 0 .25rem}input[type=text],input[type=password]"
    "{width:100%;padding:.4rem;box-sizing:border-box}button{margin-top:1rem;padding:.4rem 1rem}"
    ".error{color:#a00}.note{color:#666;font-size:.85rem}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def login_page(
    params: Iterable[tuple[str, str]], client_id: str, username: str = "", error: str = ""
) -> str:
    """The login form; `params` (the authorization request) travel back as hidden fields."""
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
        for k, v in params
        if k not in ("username", "password")
    )
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page(
        "Sign in",
        "<h1>Sign in</h1>"
        f"<p>to continue to <strong>{escape(client_id)}</strong></p>{message}"
        f'<form method="post" action="/authorize">{hidden}'
        '<label for="username">Username</label>'
        f'<input type="text" id="username" name="username" value="{escape(username)}" '
        'autocomplete="username" autofocus required>'
        '<label for="password">Password</label>'
        '<input type="password" id="password" name="password" '
        'autocomplete="current-password" required>'
        '<button type="submit">Sign in</button></form>'
        '<p class="note">mrzap development identity provider (not for production)</p>',
    )


def error_page(error: str, description: str) -> str:
    """The page shown when the request cannot safely be sent back to the client."""
    return _page(
        "Sign-in error",
        f"<h1>Sign-in error</h1><p><code>{escape(error)}</code></p><p>{escape(description)}</p>",
    )
