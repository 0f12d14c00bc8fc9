"""``SecureCache``: the facade applications import. It owns the pools and their lifecycle."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import redis.asyncio as aioredis
from opentelemetry import metrics, trace

from securecache import redaction
from securecache.audit import Audit
from securecache.breaker import CircuitBreaker
from securecache.cache import RedisCache, connect
from securecache.errors import ConfigurationError, SecureCacheError, ValidationError
from securecache.keys import KeyScheme, Kind
from securecache.listener import ChangeListener
from securecache.models import (
    MAX_BATCH,
    MAX_PAGE,
    Health,
    Page,
    Score,
    ScoreUpdate,
    ScoreWrite,
    Security,
    validate_id,
    validate_ids,
)
from securecache.nearcache import NearCache, Subscription
from securecache.readthrough import CacheBackend, Fetch, R, ReadThrough, TTLPolicy, drop
from securecache.settings import Settings
from securecache.store import Store
from securecache.telemetry import Telemetry


def encode_cursor(last_id: str) -> str:
    """An opaque cursor: clients must not build or parse them."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor points after; a malformed cursor is a ValidationError."""
    if not isinstance(cursor, str):
        raise ValidationError("cursor must be a string this API returned", field="cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return validate_id(raw, "cursor")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValidationError("cursor is not one this API returned", field="cursor") from exc


class Securities:
    """Securities: read-through reads and keyset-paginated listing."""

    def __init__(self, reads: ReadThrough[Security], store: Store, telemetry: Telemetry) -> None:
        self._reads = reads
        self._store = store
        self._telemetry = telemetry

    async def get(self, security_id: str) -> Security | None:
        """The security, or None if it does not exist."""
        return await self._reads.get(security_id)

    async def get_many(self, security_ids: Iterable[str]) -> dict[str, Security]:
        """The securities among ``security_ids`` that exist."""
        return await self._reads.get_many(validate_ids(security_ids))

    async def list(self, limit: int = 50, after: str | None = None) -> Page[Security]:
        """One page in id order; pass ``page.next_cursor`` as ``after`` for the next one."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit")
        start = None if after is None else decode_cursor(after)
        with self._telemetry.call_span("securecache securities.list"):
            rows = await self._store.list_securities(limit + 1, start)
        items = rows[:limit]
        next_cursor = encode_cursor(items[-1].id) if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)


class Scores:
    """Scores: read-through reads and write-through writes."""

    def __init__(self, reads: ReadThrough[Score], store: Store, telemetry: Telemetry) -> None:
        self._reads = reads
        self._store = store
        self._telemetry = telemetry

    async def get(self, security_id: str) -> Score | None:
        """The score of a security, or None if it has none (or the security does not exist)."""
        return await self._reads.get(security_id)

    async def get_many(self, security_ids: Iterable[str]) -> dict[str, Score]:
        """The scores among ``security_ids`` that exist."""
        return await self._reads.get_many(validate_ids(security_ids))

    async def put(
        self, security_id: str, update: ScoreUpdate, *, if_version: int | None = None
    ) -> Score:
        """Write a score (commit, then cache); see :meth:`upsert`."""
        return (await self.upsert(security_id, update, if_version=if_version)).score

    async def upsert(
        self, security_id: str, update: ScoreUpdate, *, if_version: int | None = None
    ) -> ScoreWrite:
        """Commit a score in PostgreSQL, then write that version to Redis.

        ``if_version`` makes the write conditional on the current version (ConflictError
        otherwise). A security that does not exist is a NotFoundError; nothing is written.
        """
        validate_id(security_id)
        writes = await self.upsert_many(
            {security_id: update}, if_versions={security_id: if_version}
        )
        return writes[security_id]

    async def upsert_many(
        self,
        updates: Mapping[str, ScoreUpdate],
        *,
        if_versions: Mapping[str, int | None] | None = None,
    ) -> dict[str, ScoreWrite]:
        """Write many scores in one transaction (all or none), then cache them in one pipeline."""
        if not isinstance(updates, Mapping):
            raise ValidationError("updates must map security ids to ScoreUpdate values")
        validate_ids(list(updates))
        if not 1 <= len(updates) <= MAX_BATCH:
            raise ValidationError(f"a batch holds 1 to {MAX_BATCH} scores", field="items")
        for update in updates.values():
            if not isinstance(update, ScoreUpdate):
                raise ValidationError("scores are written as ScoreUpdate values")
        if if_versions is not None:
            if not isinstance(if_versions, Mapping) or not set(if_versions) <= set(updates):
                raise ValidationError(
                    "if_versions must map ids of this batch to versions", field="if_version"
                )
            for version in if_versions.values():
                if version is not None and (
                    isinstance(version, bool) or not isinstance(version, int) or version < 1
                ):
                    raise ValidationError("if_version must be an integer >= 1", field="if_version")
        with self._telemetry.call_span("securecache scores.put") as span:
            span.set_attribute("securecache.ids", len(updates))
            return await self._reads.write(
                list(updates),
                lambda: self._store.upsert_scores(updates, if_versions),
                lambda writes: [w.score for w in writes.values()],
            )


class SecureCache:
    """Security and Score records: PostgreSQL as the truth, Redis as the shared cache.

    Use as ``async with SecureCache(settings) as cache:``, or call :meth:`open` and
    :meth:`aclose`. Without ``redis_url`` every read goes to PostgreSQL.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        wrap_redis: Callable[[CacheBackend], CacheBackend] | None = None,
    ) -> None:
        """``wrap_redis`` is a seam: it receives the Redis backend the policy would use and
        returns the one it uses instead (instrumentation, or a fault or delay in tests)."""
        redaction.install()  # a second net under settings that never echo a password
        self.settings = settings if settings is not None else Settings.from_env()
        s = self.settings
        if not s.database_url:
            raise ConfigurationError(
                "database_url is required (SECURECACHE_DATABASE_URL)", field="database_url"
            )
        self._telemetry = Telemetry(tracer_provider, meter_provider)
        self._keys = KeyScheme(s.key_prefix)
        self._store = Store.create(
            s.database_url,
            self._telemetry,
            min_size=s.db_pool_min_size,
            max_size=s.db_pool_max_size,
            timeout=s.db_timeout_seconds,
        )
        self._cache = (
            RedisCache(
                connect(
                    s.redis_url,
                    cluster=s.redis_cluster,
                    timeout=s.redis_timeout_seconds,
                    max_connections=s.redis_max_connections,
                ),
                self._telemetry,
                CircuitBreaker(s.breaker_failures, s.breaker_reset_seconds),
                # Writers announce changes whether or not they keep a near cache themselves:
                # the processes that read may.
                channel=self._keys.channel,
                entry_ttl_bound=s.ttl_seconds * (1 + s.ttl_jitter),
            )
            if s.redis_url
            else None
        )
        self._near = (
            NearCache(s.local_cache_size, s.local_cache_ttl_seconds, self._telemetry)
            if s.local_cache_size and s.redis_url
            else None
        )
        self._subscription = (
            Subscription(
                self._near,
                lambda: aioredis.Redis.from_url(
                    s.redis_url or "", socket_connect_timeout=s.redis_timeout_seconds
                ),
                self._keys.channel,
            )
            if self._near is not None
            else None
        )
        self._backend: CacheBackend | None = self._cache
        if self._backend is not None and wrap_redis is not None:
            self._backend = wrap_redis(self._backend)
        ttl = TTLPolicy(s.ttl_seconds, s.negative_ttl_seconds, s.ttl_jitter)
        by_kind: dict[Kind, ReadThrough[Any]] = {}

        async def drop_kind(kind: Kind, ids: Sequence[str]) -> None:
            await drop(self._backend, [by_kind[kind]], ids)

        async def rows(kind: Kind, ids: Sequence[str]) -> Mapping[str, Security | Score]:
            if kind is Kind.SECURITY:
                return await self._store.securities(ids)
            return await self._store.scores(ids)

        self._audit = Audit(
            rate=s.audit_sample_rate,
            grace=s.audit_grace_seconds,
            rows=rows,
            drop=drop_kind,
            telemetry=self._telemetry,
        )

        def reads(kind: Kind, record_type: type[R], fetch: Fetch[R]) -> ReadThrough[R]:
            return ReadThrough(
                kind=kind,
                record_type=record_type,
                fetch=fetch,
                cache=self._backend,
                keys=self._keys,
                ttl=ttl,
                telemetry=self._telemetry,
                lease_ms=s.lease_ms,
                lease_wait_ms=s.lease_wait_ms,
                versions=self._store.versions,
                audit=self._audit,
                near=self._near,
            )

        security_reads = reads(Kind.SECURITY, Security, self._store.securities)
        score_reads = reads(Kind.SCORE, Score, self._store.scores)
        self._reads = (security_reads, score_reads)
        by_kind.update({Kind.SECURITY: security_reads, Kind.SCORE: score_reads})
        self.securities = Securities(security_reads, self._store, self._telemetry)
        self.scores = Scores(score_reads, self._store, self._telemetry)
        self._listener = (
            ChangeListener(
                s.database_url,
                self._cache,
                self._keys,
                floor_ttl_ms=round(s.ttl_seconds * 1000),
                timeout=s.db_timeout_seconds,
                on_change=self._near.invalidate if self._near is not None else None,
            )
            if s.listen_changes and self._cache is not None
            else None
        )
        self._opened = False

    async def open(self) -> Self:
        """Start the pools (PostgreSQL connects in the background)."""
        if not self._opened:
            await self._store.open()
            if self._subscription is not None:
                self._subscription.start()
            if self._listener is not None:
                self._listener.start()
            self._opened = True
        return self

    async def aclose(self) -> None:
        """Finish loads in flight, then close the pools."""
        if not self._opened:
            return
        self._opened = False
        if self._listener is not None:
            await self._listener.stop()
        if self._subscription is not None:
            await self._subscription.stop()
        for reads in self._reads:
            await reads.aclose()
        await self._audit.aclose()
        if self._cache is not None:
            await self._cache.close()
        await self._store.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def invalidate(self, security_id: str) -> None:
        """Drop the cached security and score of ``security_id`` (and void fills in flight)."""
        validate_id(security_id)
        with self._telemetry.call_span("securecache invalidate"):
            await drop(self._backend, self._reads, [security_id])

    async def health(self) -> Health:
        """Whether PostgreSQL answers and in what state Redis is (for readiness probes)."""
        try:
            await self._store.ping()
            database = True
        except SecureCacheError:
            database = False
        if self._cache is None:
            redis = "disabled"
        elif await self._cache.ping() and not self._cache.degraded:
            redis = "ok"
        else:
            redis = "degraded"
        return Health(database=database, redis=redis)
