"""Bearer-token authentication (RFC 6750) for the operations an :class:`~servers.routes.Api`
guards.

Tokens are named and scoped (:class:`servers.settings.ApiToken`): ``read`` tokens may call
the GET operations, ``write`` tokens every operation. No credentials, or a malformed or
unknown token, is 401 with a ``WWW-Authenticate: Bearer`` challenge (``error="invalid_token"``
for a bad token); a valid token without the scope is 403 with ``error="insufficient_scope"``
(RFC 6750). Tokens are compared as SHA-256 digests, in constant time, against every
configured token (so timing tells nothing about a token, or which matched). Secrets are never
logged; every write logs the name of the token that made it. Authentication comes before
anything in the request is read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request

from securecache import ConfigurationError
from servers.problems import Problem
from servers.routes import Reply, ResponseHeader, failure
from servers.settings import API_TOKENS_VAR, ApiToken, ServerSettings

log = logging.getLogger("securecache.servers.auth")


def _digest(token: bytes) -> bytes:
    # Tokens are compared as digests: equal lengths, so not even a token's length leaks.
    return hashlib.sha256(token).digest()


class BearerAuth:
    """``Authorization: Bearer <token>`` against the server's configured tokens."""

    def __init__(self, realm: str) -> None:
        self.scheme_name = "bearer"
        self.scheme: dict[str, Any] = {"type": "http", "scheme": "bearer"}
        self.challenge = f'Bearer realm="{realm}"'
        self.refused: Reply = failure(
            401,
            "No bearer token, or not a valid one.",
            **{
                "WWW-Authenticate": ResponseHeader(
                    "`Bearer realm=...`, with `error=...` for a bad token."
                )
            },
        )

        self.forbidden: Reply = failure(
            403,
            "The token may not do this (a read token on a write).",
            **{"WWW-Authenticate": ResponseHeader('`Bearer ..., error="insufficient_scope"`.')},
        )

    def refusals(self, method: str) -> list[Reply]:
        """What an operation of ``method`` may answer for want of credentials."""
        return [self.refused] if _scope(method) == "read" else [self.refused, self.forbidden]

    def start(self, app: Starlette, server: ServerSettings) -> None:
        """Refuse to start without tokens: an API nobody can call is a mistake."""
        tokens = tuple((_digest(t.secret.encode()), t) for t in server.api_tokens)
        if not tokens:
            raise ConfigurationError(
                "the internal API needs at least one bearer token "
                f"({API_TOKENS_VAR} or {API_TOKENS_VAR}_FILE)",
                field="api_tokens",
            )
        app.state.tokens = tokens

    def check(self, request: Request) -> None:
        """Raise a 401 problem unless the request carries one of the configured tokens."""
        scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Problem(
                401,
                "send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": self.challenge},
            )
        # Header values arrive as latin-1 text; compare the bytes that were sent.
        given = _digest(credentials.strip().encode("latin-1"))
        matched: ApiToken | None = None
        for digest, token in getattr(request.app.state, "tokens", ()):
            if hmac.compare_digest(digest, given):
                matched = token
        if matched is None:
            raise Problem(
                401,
                "the bearer token is not valid",
                headers={"WWW-Authenticate": f'{self.challenge}, error="invalid_token"'},
            )
        scope = _scope(request.method)
        if not matched.allows(scope):
            raise Problem(
                403,
                f"token {matched.name!r} may only read",
                headers={"WWW-Authenticate": f'{self.challenge}, error="insufficient_scope"'},
            )
        if scope == "write":
            log.info("%s %s by token %r", request.method, request.url.path, matched.name)


def _scope(method: str) -> str:
    return "read" if method in ("GET", "HEAD") else "write"
