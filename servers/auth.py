"""Bearer-token authentication (RFC 6750) for the operations an :class:`~servers.routes.Api`
guards.

Every failure is 401 with a ``WWW-Authenticate: Bearer`` challenge: no credentials gets the
bare challenge, a malformed or unknown token adds ``error="invalid_token"``. 403 is never
sent, because a valid token grants everything the API does: there is no authenticated-but-
not-allowed case. Tokens are compared as SHA-256 digests, in constant time, against every
configured token (so timing tells nothing about a token, or which matched), and are never
logged. Authentication comes before anything in the request is read.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request

from securecache import ConfigurationError
from servers.problems import Problem
from servers.routes import Reply, ResponseHeader, failure
from servers.settings import API_TOKENS_VAR, ServerSettings


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

    def start(self, app: Starlette, server: ServerSettings) -> None:
        """Refuse to start without tokens: an API nobody can call is a mistake."""
        tokens = tuple(_digest(t.encode()) for t in server.api_tokens)
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
        matched = False
        for token in getattr(request.app.state, "tokens", ()):
            matched |= hmac.compare_digest(token, given)
        if not matched:
            raise Problem(
                401,
                "the bearer token is not valid",
                headers={"WWW-Authenticate": f'{self.challenge}, error="invalid_token"'},
            )
