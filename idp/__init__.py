"""The development OIDC identity provider (`mrzapd idp`, `python -m idp`).

For development and tests only: mrzap never requires it in production, where the organisation's
own IdP (Okta, Google, Entra ID, Keycloak, …) plays this part. It stands in for that IdP in the
login flow of PROTOCOL.md §3: zli sends the browser to `/authorize` with PKCE (S256) and the
PK-token nonce; the user signs in on a username/password form; the browser comes back to zli's
loopback redirect with a code; zli redeems it at `/token` for an RS256 ID token carrying the nonce
(and a refresh token, later traded for nonce-less refreshed ID tokens). Verifiers check those
tokens against the keys this IdP publishes at its JWKS URL, found by discovery.

Data flow: the TOML config (`_config`) gives clients and users (password hashes, `_passwords`);
the signing key lives in a 0600 file of the data directory (`_keys`); codes and tokens live in
memory (`_store`); authlib's core does the OAuth/OIDC logic (`_oidc`); the stdlib HTTP server
(`_server`) carries it; `cli` wires it into `mrzapd idp`.
"""

from __future__ import annotations

from ._config import ClientConfig, DevIdpConfig, DevIdpConfigError, UserConfig
from ._keys import KEY_FILE_NAME, KeyFileError, SigningKeys
from ._oidc import OidcProvider
from ._passwords import hash_password, verify_password
from ._server import IdpServer
from .cli import idp_command

__all__ = [
    "KEY_FILE_NAME",
    "ClientConfig",
    "DevIdpConfig",
    "DevIdpConfigError",
    "IdpServer",
    "KeyFileError",
    "OidcProvider",
    "SigningKeys",
    "UserConfig",
    "hash_password",
    "idp_command",
    "verify_password",
]
