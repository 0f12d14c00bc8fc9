"""Typed settings, read from ``SECURECACHE_*`` environment variables.

Every field has a variable of the same name in upper case with the ``SECURECACHE_`` prefix.
Secrets may come from files instead (``SECURECACHE_DATABASE_URL_FILE`` and so on, as mounted
from Kubernetes Secrets). A malformed value fails at start-up with the variable's name, never
later in the middle of a request.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import attrs
from psycopg.conninfo import conninfo_to_dict
from redis.connection import parse_url

from securecache.errors import ConfigurationError
from securecache.keys import validate_prefix
from securecache.redaction import redact_url

ENV_PREFIX: Final = "SECURECACHE_"
_SECRET_FIELDS: Final = ("database_url", "redis_url")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _redacted(url: str | None) -> str:
    return repr(redact_url(url))


def _check_database_url(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """A postgresql:// URL that libpq can parse, checked now rather than on every pool retry.

    The errors never quote the URL: psycopg's own message echoes a malformed password.
    """
    if value is None:
        return
    if urlsplit(value).scheme not in {"postgresql", "postgres"}:
        raise ConfigurationError(
            f"{attribute.name} must be a postgresql:// URL", field=attribute.name
        )
    try:
        params = conninfo_to_dict(value)
        port = params.get("port")
        if port is not None and not all(0 < int(p) < 65536 for p in str(port).split(",")):
            raise ValueError("port")
    except Exception:  # whatever the reason, its text may contain the password
        raise ConfigurationError(
            f"{attribute.name} is not a valid PostgreSQL URL (check the port and that the user "
            "and password are percent-encoded)",
            field=attribute.name,
        ) from None


def _check_redis_url(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """A Redis URL redis-py can parse, with well-formed percent-escapes (redis-py would
    otherwise pass ``pa%zzss`` on as the password, or decode one it cannot read)."""
    if value is None:
        return
    if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
        raise ConfigurationError(
            f"{attribute.name} must be a redis://, rediss:// or unix:// URL", field=attribute.name
        )
    try:
        parse_url(value)  # type: ignore[no-untyped-call]
        parts = urlsplit(value)
        for part in (parts.username, parts.password):
            if part is not None:
                unquote(part, errors="strict")
                if _BAD_ESCAPE.search(part):
                    raise ValueError("escape")
    except Exception:  # whatever the reason, its text may contain the password
        raise ConfigurationError(
            f"{attribute.name} is not a valid Redis URL (check the port, the database number "
            "and that the user and password are percent-encoded)",
            field=attribute.name,
        ) from None


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(
            f"{attribute.name} must be > 0, got {value!r}", field=attribute.name
        )


def _not_negative(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigurationError(
            f"{attribute.name} must be >= 0, got {value!r}", field=attribute.name
        )


def _fraction(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ConfigurationError(
            f"{attribute.name} must be in [0, 1), got {value!r}", field=attribute.name
        )


def _rate(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ConfigurationError(
            f"{attribute.name} must be in [0, 1], got {value!r}", field=attribute.name
        )


def _prefix(_: Any, __: attrs.Attribute[Any], value: str) -> None:
    validate_prefix(value)


@attrs.frozen
class Settings:
    """Everything securecache needs to know about its environment."""

    database_url: str | None = attrs.field(
        default=None, validator=_check_database_url, repr=_redacted
    )
    """PostgreSQL URL of the role this process should use (reader, writer or admin)."""
    redis_url: str | None = attrs.field(default=None, validator=_check_redis_url, repr=_redacted)
    """Redis URL; ``rediss://`` for TLS. None runs without a cache (reads go to PostgreSQL)."""
    redis_cluster: bool = False
    """Talk to a Redis Cluster (keys are hash-tagged per security id)."""
    ttl_seconds: float = attrs.field(default=300.0, validator=_positive)
    negative_ttl_seconds: float = attrs.field(default=30.0, validator=_positive)
    """How long an id known to be absent is remembered."""
    ttl_jitter: float = attrs.field(default=0.1, validator=_fraction)
    """Fraction of the TTL added at random, so entries written together expire apart."""
    key_prefix: str = attrs.field(default="sc", validator=_prefix)
    listen_changes: bool = False
    """Run the PostgreSQL NOTIFY listener (changes made outside the library)."""
    local_cache_size: int = attrs.field(default=0, validator=_not_negative)
    """Entries of the in-process near cache (0: off). Needs a Redis to tell it of changes."""
    local_cache_ttl_seconds: float = attrs.field(default=1.0, validator=_positive)
    """Hard maximum age of a near-cache entry: the bound on how stale a near hit can be."""
    db_pool_min_size: int = attrs.field(default=1, validator=_not_negative)
    db_pool_max_size: int = attrs.field(default=10, validator=_positive)
    db_timeout_seconds: float = attrs.field(default=5.0, validator=_positive)
    """Longest wait for a PostgreSQL connection before UnavailableError."""
    redis_timeout_seconds: float = attrs.field(default=0.25, validator=_positive)
    """Socket timeout for Redis: short, because PostgreSQL can always answer instead."""
    redis_max_connections: int = attrs.field(default=50, validator=_positive)
    breaker_failures: int = attrs.field(default=5, validator=_positive)
    """Consecutive Redis failures that open the circuit breaker."""
    breaker_reset_seconds: float = attrs.field(default=2.0, validator=_positive)
    """How long the breaker stays open before one call probes Redis again."""
    lease_ms: int = attrs.field(default=5000, validator=_positive)
    """How long a fill lease lasts (an upper bound on one PostgreSQL read)."""
    lease_wait_ms: int = attrs.field(default=200, validator=_not_negative)
    """How long a miss waits for the fill of another process holding the key's lease before
    reading PostgreSQL itself (0: never wait; at most ``lease_ms``)."""
    audit_sample_rate: float = attrs.field(default=0.0, validator=_rate)
    """Share of cache hits re-read from PostgreSQL in the background (0 = audit off)."""
    audit_grace_seconds: float = attrs.field(default=5.0, validator=_positive)
    """How long an entry may trail its row (a write-through on its way) before it counts."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            raw = _lookup(env, field.name)
            if raw is not None:
                values[field.name] = _parse(field, raw)
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigurationError as exc:
            if exc.field is None or exc.field in overrides:
                raise
            var = ENV_PREFIX + exc.field.upper()
            raise ConfigurationError(f"{var}: {exc}", field=exc.field) from exc

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (validated again)."""
        return attrs.evolve(self, **changes)


def read_secret(var: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``$VAR``, or else the content of the file named by ``$VAR_FILE`` (a mounted Kubernetes
    Secret), stripped; None when neither gives a value. The one reader of ``*_FILE``."""
    env = os.environ if environ is None else environ
    if value := env.get(var):
        return value
    if path := env.get(var + "_FILE"):
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            field = var.removeprefix(ENV_PREFIX).lower()
            raise ConfigurationError(
                f"{var}_FILE: cannot read {path}: {exc.strerror}", field=field
            ) from exc
    return None


def _lookup(env: Mapping[str, str], name: str) -> str | None:
    var = ENV_PREFIX + name.upper()
    if name in _SECRET_FIELDS:
        return read_secret(var, env)
    return env.get(var) or None


def _parse(field: attrs.Attribute[Any], raw: str) -> Any:
    var = ENV_PREFIX + field.name.upper()
    kind = field.type
    try:
        if kind in ("bool", bool):
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"{var}: cannot parse {raw!r} as {kind}", field=field.name
        ) from exc
    return raw
