"""What a server process needs beyond the library's settings, read from ``SECURECACHE_*``.

The library's :class:`securecache.Settings` says how to reach PostgreSQL and Redis; what only
an HTTP server needs lives here:

- ``SECURECACHE_API_TOKENS`` (comma- or newline-separated) or ``SECURECACHE_API_TOKENS_FILE``
  (a file holding them, as mounted from a Kubernetes Secret): the internal API's bearer
  tokens. The file is read only when the variable itself is empty.
- ``SECURECACHE_METRICS_PORT``: the port of the Prometheus ``/metrics`` endpoint, on the
  API's host but never on the API's port; 0 turns it off. Unset, it is off for an app built
  in process, and the launcher's default for ``python -m servers`` (9464 for the public
  API, 9465 for the internal one), so two APIs on one host do not collide.

A malformed value fails at start-up naming its variable, as the library's settings do.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from securecache import ConfigurationError, Settings

API_TOKENS_VAR: Final = "SECURECACHE_API_TOKENS"
METRICS_PORT_VAR: Final = "SECURECACHE_METRICS_PORT"
LISTEN_CHANGES_VAR: Final = "SECURECACHE_LISTEN_CHANGES"
_MAX_PORT: Final = 65535


def _tokens(value: Iterable[str]) -> tuple[str, ...]:
    """Tokens as a tuple; a bare string would otherwise become one token per character."""
    if isinstance(value, str):
        raise ConfigurationError("api_tokens must be a sequence of tokens", field="api_tokens")
    return tuple(t for t in value if t)


def _port(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not 0 <= value <= _MAX_PORT:
        raise ConfigurationError(
            f"{attribute.name} must be a port from 0 (off) to {_MAX_PORT}, got {value!r}",
            field=attribute.name,
        )


@attrs.frozen
class ServerSettings:
    """A server process's own settings (the library's are :class:`securecache.Settings`)."""

    api_tokens: tuple[str, ...] = attrs.field(default=(), repr=False, converter=_tokens)
    """Bearer tokens the internal API accepts (any of them: rotate one at a time)."""
    metrics_port: int = attrs.field(default=0, validator=_port)
    """Port of the Prometheus endpoint; 0 is off."""
    metrics_host: str = "127.0.0.1"
    """Address the Prometheus endpoint listens on (the launcher uses the API's ``--host``)."""

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        default_metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
    ) -> ServerSettings:
        """Read ``SECURECACHE_API_TOKENS[_FILE]`` and ``SECURECACHE_METRICS_PORT``."""
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
        return cls(
            api_tokens=_split_tokens(_secret(env, API_TOKENS_VAR)),
            metrics_port=port,
            metrics_host=metrics_host,
        )


def _secret(env: Mapping[str, str], var: str) -> str:
    """The variable, or when it is empty the contents of the file ``<var>_FILE`` names."""
    value = env.get(var, "")
    path = env.get(var + "_FILE")
    if value or not path:
        return value
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"{var}_FILE: cannot read {path}: {exc.strerror}", field="api_tokens"
        ) from exc


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
