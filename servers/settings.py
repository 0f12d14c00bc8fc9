"""What a server process needs beyond the library's settings, read from ``SECURECACHE_*``.

The library's :class:`securecache.Settings` says how to reach PostgreSQL and Redis; what only
an HTTP server needs lives here:

- ``SECURECACHE_API_TOKENS`` (comma- or newline-separated) or ``SECURECACHE_API_TOKENS_FILE``
  (a file holding them, as mounted from a Kubernetes Secret): the internal API's bearer
  tokens, each ``name:scope:secret``. The name says whose it is (it is logged with every
  write; the secret never is); the scope is ``read`` (GETs) or ``write`` (everything); the
  secret is at least 22 characters (128 bits from ``secrets.token_urlsafe(16)``; use
  ``python -c "import secrets; print(secrets.token_urlsafe(32))"``). The file is read only
  when the variable itself is empty.
- ``SECURECACHE_MAX_HEADER_BYTES`` (16384) and ``SECURECACHE_HEADER_TIMEOUT_SECONDS`` (10):
  how large the request line and headers may be (431 beyond) and how long a client has to
  send them (the connection is closed after), see :mod:`servers.http_limits`.
- ``SECURECACHE_METRICS_PORT``: the port of the Prometheus ``/metrics`` endpoint, on the
  API's host but never on the API's port; 0 turns it off. Unset, it is off for an app built
  in process, and the launcher's default for ``python -m servers`` (9464 for the public
  API, 9465 for the internal one), so two APIs on one host do not collide.

- ``SECURECACHE_ACCESS_LOG`` (``false``): uvicorn's access log, one INFO line per request.
  Off by default: every request is already a sample of the request-duration histogram (and
  a span, when exported), and the line costs more CPU than a near-cache read
  (docs/performance.md); turn it on where a log line per request is wanted.

A malformed value fails at start-up naming its variable, as the library's settings do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from securecache import ConfigurationError, Settings
from securecache.settings import read_secret
from servers.http_limits import HEADER_TIMEOUT_SECONDS, MAX_HEADER_BYTES, HttpLimits

API_TOKENS_VAR: Final = "SECURECACHE_API_TOKENS"
METRICS_PORT_VAR: Final = "SECURECACHE_METRICS_PORT"
MAX_HEADER_BYTES_VAR: Final = "SECURECACHE_MAX_HEADER_BYTES"
HEADER_TIMEOUT_VAR: Final = "SECURECACHE_HEADER_TIMEOUT_SECONDS"
LISTEN_CHANGES_VAR: Final = "SECURECACHE_LISTEN_CHANGES"
ACCESS_LOG_VAR: Final = "SECURECACHE_ACCESS_LOG"
_MAX_PORT: Final = 65535


TOKEN_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
SCOPES: Final = ("read", "write")
MIN_SECRET_LENGTH: Final = 22
"""22 URL-safe characters carry 128 bits: ``secrets.token_urlsafe(16)``."""


@attrs.frozen
class ApiToken:
    """One bearer token: who holds it, what it may do, and the secret (never shown)."""

    name: str
    scope: str
    secret: str = attrs.field(repr=False)

    @classmethod
    def parse(cls, entry: str) -> ApiToken:
        """``name:scope:secret``; the error names the entry by its name, never its secret."""
        name, _, rest = entry.strip().partition(":")
        scope, _, secret = rest.partition(":")
        if entry.count(":") < 2 or TOKEN_NAME.fullmatch(name) is None:
            # Nothing of the entry is quoted: an old-style token would be all secret.
            raise ConfigurationError(
                "each API token is name:scope:secret, the name 1-64 characters of [A-Za-z0-9._-]",
                field="api_tokens",
            )
        if scope not in SCOPES:
            raise ConfigurationError(
                f"API token {name!r}: the scope is read or write", field="api_tokens"
            )
        if len(secret) < MIN_SECRET_LENGTH or not secret.isprintable() or " " in secret:
            raise ConfigurationError(
                f"API token {name!r}: the secret must be at least {MIN_SECRET_LENGTH} printable "
                "characters without spaces (secrets.token_urlsafe(16) or longer)",
                field="api_tokens",
            )
        return cls(name=name, scope=scope, secret=secret)

    def allows(self, scope: str) -> bool:
        return self.scope == "write" or scope == "read"


def _tokens(value: Iterable[str | ApiToken]) -> tuple[ApiToken, ...]:
    """Tokens from entries or ApiToken values; names and secrets must be unique."""
    if isinstance(value, str):
        raise ConfigurationError("api_tokens must be a sequence of tokens", field="api_tokens")
    tokens = tuple(t if isinstance(t, ApiToken) else ApiToken.parse(t) for t in value if t)
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise ConfigurationError("API token names must be unique", field="api_tokens")
    if len({t.secret for t in tokens}) != len(tokens):
        raise ConfigurationError("two API tokens share a secret", field="api_tokens")
    return tokens


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not value > 0:
        raise ConfigurationError(
            f"{attribute.name} must be > 0, got {value!r}", field=attribute.name
        )


def _port(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not 0 <= value <= _MAX_PORT:
        raise ConfigurationError(
            f"{attribute.name} must be a port from 0 (off) to {_MAX_PORT}, got {value!r}",
            field=attribute.name,
        )


@attrs.frozen
class ServerSettings:
    """A server process's own settings (the library's are :class:`securecache.Settings`)."""

    api_tokens: tuple[ApiToken, ...] = attrs.field(default=(), repr=False, converter=_tokens)
    """Bearer tokens the internal API accepts (any of them: rotate one at a time)."""
    metrics_port: int = attrs.field(default=0, validator=_port)
    """Port of the Prometheus endpoint; 0 is off."""
    metrics_host: str = "127.0.0.1"
    """Address the Prometheus endpoint listens on (the launcher uses the API's ``--host``)."""
    max_header_bytes: int = attrs.field(default=MAX_HEADER_BYTES, validator=_positive)
    """Largest request line plus headers accepted (431 beyond)."""
    header_timeout_seconds: float = attrs.field(default=HEADER_TIMEOUT_SECONDS, validator=_positive)
    """Time a client has to send its headers before the connection is closed (slowloris)."""
    access_log: bool = False
    """uvicorn's access log: a line per request (off by default, see the module's docstring)."""

    @property
    def http_limits(self) -> HttpLimits:
        return HttpLimits(self.max_header_bytes, self.header_timeout_seconds)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        default_metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
    ) -> ServerSettings:
        """Read the ``SECURECACHE_*`` variables the module's docstring lists."""
        env = os.environ if environ is None else environ
        raw_port = env.get(METRICS_PORT_VAR, "").strip()
        try:
            port = int(raw_port) if raw_port else default_metrics_port
            _port(None, attrs.fields(cls).metrics_port, port)
        except (ValueError, ConfigurationError):
            raise ConfigurationError(
                f"{METRICS_PORT_VAR}: {raw_port!r} is not a port from 0 (off) to {_MAX_PORT}",
                field="metrics_port",
            ) from None
        limits: dict[str, Any] = {}
        for var, field, kind in (
            (MAX_HEADER_BYTES_VAR, "max_header_bytes", int),
            (HEADER_TIMEOUT_VAR, "header_timeout_seconds", float),
        ):
            if raw := env.get(var, "").strip():
                try:
                    limits[field] = kind(raw)
                except ValueError:
                    raise ConfigurationError(
                        f"{var}: {raw!r} is not a positive number", field=field
                    ) from None
        return cls(
            api_tokens=_split_tokens(read_secret(API_TOKENS_VAR, env) or ""),
            metrics_port=port,
            metrics_host=metrics_host,
            access_log=_flag(ACCESS_LOG_VAR, "access_log", env.get(ACCESS_LOG_VAR, "")),
            **limits,
        )


def _flag(var: str, field: str, raw: str) -> bool:
    """A boolean variable: true/false (also 1/0, yes/no, on/off); unset or empty is false."""
    lowered = raw.strip().lower()
    if lowered in {"", "0", "false", "no", "off"}:
        return False
    if lowered in {"1", "true", "yes", "on"}:
        return True
    raise ConfigurationError(f"{var}: {raw!r} is not true or false", field=field)


def _split_tokens(raw: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in raw.replace("\n", ",").split(",") if t.strip())


def library_settings_from_env() -> Settings:
    """The library's settings for a server process: the change listener is on unless off.

    The design keeps the listener off in the library (a plain import should open no extra
    connection) and on in the servers, whose caches must follow changes made elsewhere.
    """
    settings = Settings.from_env()
    if LISTEN_CHANGES_VAR not in os.environ:
        settings = settings.with_changes(listen_changes=True)
    return settings
