"""Behaviour of the library against real PostgreSQL and Redis.

Every test runs twice: on the async API and on the sync twin (``securecache.sync``), the
latter driven through ``asyncio.to_thread`` so both share one test body. The sync twin must
pass the same behavioural tests as the async API.

What a test says about where a value came from is proven, not inferred: the Redis entries are
read with an admin client, PostgreSQL rows with an admin connection, and round trips are
counted from the spans the library emits into an in-memory exporter.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import secrets
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import psycopg
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from entries import decode, holds, plant
from fix_servers import Database, MakeSecurities
from securecache import (
    ConfigurationError,
    ConflictError,
    Health,
    NotFoundError,
    Page,
    PermissionDeniedError,
    Score,
    ScoreUpdate,
    ScoreWrite,
    SecureCache,
    SecureCacheError,
    Security,
    Settings,
    ValidationError,
    sync,
)
from securecache.codec import ABSENT, MAX_ENTRY_BYTES
from securecache.keys import KeyScheme, Kind
from securecache.ops.dev import ServerInfo
from securecache.telemetry import SOURCE

# -- one interface over both flavours ------------------------------------------------------


class SecuritiesApi(Protocol):
    async def get(self, security_id: str, /) -> Security | None: ...
    async def get_many(self, security_ids: Iterable[str], /) -> dict[str, Security]: ...
    async def list(self, limit: int = 50, after: str | None = None) -> Page[Security]: ...


class ScoresApi(Protocol):
    async def get(self, security_id: str, /) -> Score | None: ...
    async def get_many(self, security_ids: Iterable[str], /) -> dict[str, Score]: ...
    async def put(
        self, security_id: str, update: ScoreUpdate, /, *, if_version: int | None = None
    ) -> Score: ...
    async def upsert(
        self, security_id: str, update: ScoreUpdate, /, *, if_version: int | None = None
    ) -> ScoreWrite: ...
    async def upsert_many(
        self,
        updates: Mapping[str, ScoreUpdate],
        /,
        *,
        if_versions: Mapping[str, int | None] | None = None,
    ) -> dict[str, ScoreWrite]: ...


class Api(Protocol):
    """What the tests call: the async facade itself, or the sync twin run in a thread."""

    @property
    def securities(self) -> SecuritiesApi: ...
    @property
    def scores(self) -> ScoresApi: ...
    async def invalidate(self, security_id: str, /) -> None: ...
    async def health(self) -> Health: ...


class ThreadedSecurities:
    """sync.Securities behind async methods: each call runs in a worker thread."""

    def __init__(self, inner: sync.Securities) -> None:
        self._inner = inner

    async def get(self, security_id: str, /) -> Security | None:
        return await asyncio.to_thread(self._inner.get, security_id)

    async def get_many(self, security_ids: Iterable[str], /) -> dict[str, Security]:
        return await asyncio.to_thread(self._inner.get_many, security_ids)

    async def list(self, limit: int = 50, after: str | None = None) -> Page[Security]:
        return await asyncio.to_thread(self._inner.list, limit=limit, after=after)


class ThreadedScores:
    """sync.Scores behind async methods: each call runs in a worker thread."""

    def __init__(self, inner: sync.Scores) -> None:
        self._inner = inner

    async def get(self, security_id: str, /) -> Score | None:
        return await asyncio.to_thread(self._inner.get, security_id)

    async def get_many(self, security_ids: Iterable[str], /) -> dict[str, Score]:
        return await asyncio.to_thread(self._inner.get_many, security_ids)

    async def put(
        self, security_id: str, update: ScoreUpdate, /, *, if_version: int | None = None
    ) -> Score:
        return await asyncio.to_thread(self._inner.put, security_id, update, if_version=if_version)

    async def upsert(
        self, security_id: str, update: ScoreUpdate, /, *, if_version: int | None = None
    ) -> ScoreWrite:
        return await asyncio.to_thread(
            self._inner.upsert, security_id, update, if_version=if_version
        )

    async def upsert_many(
        self,
        updates: Mapping[str, ScoreUpdate],
        /,
        *,
        if_versions: Mapping[str, int | None] | None = None,
    ) -> dict[str, ScoreWrite]:
        return await asyncio.to_thread(self._inner.upsert_many, updates, if_versions=if_versions)


class ThreadedApi:
    """The sync twin as an :class:`Api`."""

    def __init__(self, inner: sync.SecureCache) -> None:
        self._inner = inner
        self._securities = ThreadedSecurities(inner.securities)
        self._scores = ThreadedScores(inner.scores)

    @property
    def securities(self) -> ThreadedSecurities:
        return self._securities

    @property
    def scores(self) -> ThreadedScores:
        return self._scores

    async def invalidate(self, security_id: str, /) -> None:
        await asyncio.to_thread(self._inner.invalidate, security_id)

    async def health(self) -> Health:
        return await asyncio.to_thread(self._inner.health)


@asynccontextmanager
async def open_api(
    flavour: str, settings: Settings, tracer_provider: TracerProvider | None = None
) -> AsyncIterator[Api]:
    """Open the facade of ``flavour`` ("async" or "sync") on ``settings``."""
    if flavour == "async":
        async with SecureCache(settings, tracer_provider=tracer_provider) as cache:
            yield cache
        return
    twin = await asyncio.to_thread(sync.SecureCache, settings, tracer_provider=tracer_provider)
    try:
        await asyncio.to_thread(twin.open)
        yield ThreadedApi(twin)
    finally:
        await asyncio.to_thread(twin.close)


# -- fixtures and helpers ------------------------------------------------------------------


@attrs.frozen
class Tracing:
    """Spans the library emitted, kept in memory."""

    provider: TracerProvider
    exporter: InMemorySpanExporter

    def clear(self) -> None:
        self.exporter.clear()

    def count(self, name: str) -> int:
        return sum(1 for span in self.exporter.get_finished_spans() if span.name == name)

    def client_spans(self) -> list[str]:
        """Names of the round trips to Redis or PostgreSQL."""
        return [s.name for s in self.exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]

    def sources(self, kind: Kind) -> list[str]:
        """The ``securecache.source`` of each single get of ``kind``, oldest first."""
        return [
            str((span.attributes or {})[SOURCE])
            for span in self.exporter.get_finished_spans()
            if span.name == f"securecache {NAMESPACES[kind]}.get"
        ]


NAMESPACES = {Kind.SECURITY: "securities", Kind.SCORE: "scores"}
"""Span names follow the facade's namespaces: ``securecache securities.get``."""


@attrs.frozen
class Stores:
    """Admin views of both stores, to check what the library really did."""

    redis: redis.Redis
    db: psycopg.Connection[Any]
    keys: KeyScheme

    def entry(self, kind: Kind, id_: str) -> bytes | None:
        raw = self.redis.get(self.keys.value(kind, id_))
        assert raw is None or isinstance(raw, bytes), raw
        return raw

    def put_entry(self, kind: Kind, id_: str, raw: bytes) -> None:
        self.redis.set(self.keys.value(kind, id_), raw, px=60_000)

    def pttl(self, kind: Kind, id_: str) -> int:
        return self.redis.pttl(self.keys.value(kind, id_))

    def exists(self, *keys: str) -> int:
        return int(self.redis.exists(*keys))

    def score_row(self, id_: str) -> tuple[int, float, float, float, float] | None:
        row = self.db.execute(
            "SELECT version, growth, value, quality, momentum FROM securecache.score"
            " WHERE security_id = %s",
            (id_,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    def security_row(self, id_: str) -> Security | None:
        row = self.db.execute(
            "SELECT id, name, symbol, exchange, version, updated_at FROM securecache.security"
            " WHERE id = %s",
            (id_,),
        ).fetchone()
        if row is None:
            return None
        return Security(
            id=row[0],
            name=row[1],
            symbol=row[2],
            exchange=row[3],
            version=row[4],
            updated_at=row[5],
        )


@pytest.fixture(params=["async", "sync"])
def flavour(request: pytest.FixtureRequest) -> str:
    """Which facade a test drives: the async API or the sync twin."""
    value: str = request.param
    return value


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    """A tracer provider for the library, exporting into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, exporter)
    provider.shutdown()


@pytest.fixture
async def api(flavour: str, settings: Settings, tracing: Tracing) -> AsyncIterator[Api]:
    """The facade of this test's flavour on the test's settings, tracing into memory."""
    async with open_api(flavour, settings, tracing.provider) as opened:
        yield opened


@pytest.fixture
def stores(
    redis_admin: redis.Redis, admin_conn: psycopg.Connection[Any], key_prefix: str
) -> Stores:
    """Admin access to Redis (under this test's prefix) and PostgreSQL."""
    return Stores(redis_admin, admin_conn, KeyScheme(key_prefix))


def unknown_id() -> str:
    """An id no fixture ever inserts."""
    return "X" + secrets.token_hex(8)


def update(
    growth: float, value: float = 5.5, quality: float = 6.5, momentum: float = 7.5
) -> ScoreUpdate:
    return ScoreUpdate(growth=growth, value=value, quality=quality, momentum=momentum)


def values(score: Score) -> tuple[float, float, float, float]:
    return (score.growth, score.value, score.quality, score.momentum)


# -- read-through --------------------------------------------------------------------------


async def test_read_through_first_from_postgres_then_from_redis(
    api: Api, tracing: Tracing, stores: Stores, make_securities: MakeSecurities
) -> None:
    """A cold get reads PostgreSQL and fills Redis; the next get is served from that entry."""
    (id_,) = make_securities(1)
    assert stores.entry(Kind.SECURITY, id_) is None
    first = await api.securities.get(id_)
    assert first == stores.security_row(id_)
    assert first is not None
    assert first.name == f"Test Security {id_}"
    assert first.version == 1
    assert holds(stores.entry(Kind.SECURITY, id_), first)
    assert tracing.count("SELECT securecache.security") == 1
    assert tracing.sources(Kind.SECURITY) == ["postgres"]

    # Plant a distinguishable (valid) entry: if the next get returns it, it came from Redis.
    planted = attrs.evolve(first, name="Planted In Redis")
    stores.put_entry(Kind.SECURITY, id_, plant(planted))
    tracing.clear()
    assert await api.securities.get(id_) == planted
    assert tracing.count("SELECT securecache.security") == 0
    assert tracing.sources(Kind.SECURITY) == ["redis"]


async def test_score_read_through(
    api: Api, tracing: Tracing, stores: Stores, make_securities: MakeSecurities
) -> None:
    """A score is read from PostgreSQL once, cached with its version, then served from Redis."""
    (id_,) = make_securities(1, with_scores=True)
    row = stores.score_row(id_)
    assert row is not None
    score = await api.scores.get(id_)
    assert score is not None
    assert (score.version, *values(score)) == row
    assert holds(stores.entry(Kind.SCORE, id_), score)
    tracing.clear()
    assert await api.scores.get(id_) == score
    assert tracing.sources(Kind.SCORE) == ["redis"]
    assert tracing.count("SELECT securecache.score") == 0


async def test_get_many_returns_only_existing_with_one_round_trip_each(
    api: Api, tracing: Tracing, stores: Stores, make_securities: MakeSecurities
) -> None:
    """A cold batch: one MGET, one lookup that takes the leases, one PostgreSQL query, one
    pipelined fill; a warm one: one MGET and nothing else."""
    ids = make_securities(7)
    missing = [unknown_id(), unknown_id()]
    tracing.clear()
    found = await api.securities.get_many([*ids, *missing, ids[0]])
    assert set(found) == set(ids)
    for id_ in ids:
        assert found[id_] == stores.security_row(id_)
        assert holds(stores.entry(Kind.SECURITY, id_), found[id_])
    for id_ in missing:
        assert decode(Security, stores.entry(Kind.SECURITY, id_)) is ABSENT
    assert tracing.count("MGET") == 1
    assert tracing.count("EVALSHA lookup") == 1
    assert tracing.count("SELECT securecache.security") == 1
    assert tracing.count("EVALSHA cas") == 1

    tracing.clear()
    assert await api.securities.get_many([*missing, *ids]) == found
    assert tracing.count("MGET") == 1
    assert tracing.count("EVALSHA lookup") == 0
    assert tracing.count("SELECT securecache.security") == 0
    assert tracing.count("EVALSHA cas") == 0


async def test_a_run_of_misses_sends_batches_straight_to_the_lookup(
    settings: Settings, tracing: Tracing, make_securities: MakeSecurities
) -> None:
    """While most recent reads missed, a batch skips the MGET: the lookup script serves its
    hits and leases its misses in one round trip; once reads hit again, hits travel by MGET
    alone."""
    ids = make_securities(6)
    async with SecureCache(settings, tracer_provider=tracing.provider) as cache:
        tracing.clear()
        assert await cache.securities.get(ids[0]) is not None  # the first cold read: MGET
        assert (tracing.count("MGET"), tracing.count("EVALSHA lookup")) == (1, 1)
        for id_ in ids[1:4]:
            await cache.securities.get(id_)
        tracing.clear()
        for id_ in ids[4:]:  # four misses in a row: cold reads now go to the script at once
            await cache.securities.get(id_)
        assert (tracing.count("MGET"), tracing.count("EVALSHA lookup")) == (0, 2)
        tracing.clear()
        for _ in range(2):  # hits, served by the script while misses still dominate
            await cache.securities.get(ids[0])
        assert (tracing.count("MGET"), tracing.count("EVALSHA lookup")) == (0, 2)
        tracing.clear()
        found = await cache.securities.get(ids[0])  # the average fell below one half
        assert found is not None
        assert (tracing.count("MGET"), tracing.count("EVALSHA lookup")) == (1, 0)
        assert tracing.count("SELECT securecache.security") == 0


async def test_score_get_many(
    api: Api, tracing: Tracing, stores: Stores, make_securities: MakeSecurities
) -> None:
    """scores.get_many returns the scores that exist, in one query, and caches every answer."""
    with_scores = make_securities(4, with_scores=True)
    without = make_securities(2)
    tracing.clear()
    found = await api.scores.get_many([*with_scores, *without])
    assert set(found) == set(with_scores)
    for id_ in with_scores:
        assert (found[id_].version, *values(found[id_])) == stores.score_row(id_)
    for id_ in without:
        assert decode(Score, stores.entry(Kind.SCORE, id_)) is ABSENT
    assert tracing.count("SELECT securecache.score") == 1
    assert tracing.count("EVALSHA lookup") == 1
    assert tracing.count("EVALSHA cas") == 1


async def test_get_many_of_nothing(api: Api, tracing: Tracing) -> None:
    """An empty batch returns an empty dict."""
    assert await api.securities.get_many([]) == {}
    assert tracing.count("SELECT securecache.security") == 0


# -- listing -------------------------------------------------------------------------------


async def test_list_pages_cover_every_id_once_in_order(
    api: Api, stores: Stores, make_securities: MakeSecurities
) -> None:
    """Following next_cursor visits every security exactly once, in id order, no empty pages."""
    mine = make_securities(23)
    every_id = [r[0] for r in stores.db.execute("SELECT id FROM securecache.security ORDER BY id")]
    limit = min(500, max(2, math.ceil(len(every_id) / 6)))
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(len(every_id) + 2):
        page = await api.securities.list(limit=limit, after=cursor)
        assert 1 <= len(page.items) <= limit
        seen.extend(item.id for item in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(page.items) == limit
    assert cursor is None, "pagination did not end"
    assert seen == every_id
    assert len(set(seen)) == len(seen)
    assert set(mine) <= set(seen)


async def test_list_returns_full_records(api: Api, make_securities: MakeSecurities) -> None:
    """Listed items are the same records a get returns."""
    ids = make_securities(3)
    listed: dict[str, Security] = {}
    cursor: str | None = None
    while True:
        page = await api.securities.list(limit=500, after=cursor)
        listed.update((item.id, item) for item in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    for id_ in ids:
        assert listed[id_] == await api.securities.get(id_)


@pytest.mark.parametrize("limit", [0, -1, 501, True, 1.5, "10", None])
async def test_list_refuses_bad_limits(api: Api, limit: Any) -> None:
    """Limits outside 1..500, and non-integers, are a ValidationError naming 'limit'."""
    with pytest.raises(ValidationError) as info:
        await api.securities.list(limit=limit)
    assert info.value.field == "limit"


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "é",
        base64.urlsafe_b64encode(b"bad id").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
async def test_list_refuses_bad_cursors(api: Api, cursor: str) -> None:
    """A cursor the API did not hand out is a ValidationError naming 'cursor'."""
    with pytest.raises(ValidationError) as info:
        await api.securities.list(limit=5, after=cursor)
    assert info.value.field == "cursor"


# -- writes --------------------------------------------------------------------------------


async def test_put_creates_then_updates(
    api: Api, tracing: Tracing, stores: Stores, make_securities: MakeSecurities
) -> None:
    """The first write creates version 1, the next updates to 2; each is in Redis at once."""
    (id_,) = make_securities(1)
    created = await api.scores.upsert(id_, update(1.25))
    assert created.created is True
    assert created.score.version == 1
    assert values(created.score) == (1.25, 5.5, 6.5, 7.5)
    assert holds(stores.entry(Kind.SCORE, id_), created.score)

    updated = await api.scores.upsert(id_, update(2.5))
    assert updated.created is False
    assert updated.score.version == 2
    assert stores.score_row(id_) == (2, 2.5, 5.5, 6.5, 7.5)
    assert holds(stores.entry(Kind.SCORE, id_), updated.score)
    tracing.clear()
    assert await api.scores.get(id_) == updated.score
    assert tracing.sources(Kind.SCORE) == ["redis"]

    third = await api.scores.put(id_, update(10, 0, 10, 0))
    assert third.version == 3
    assert values(third) == (10.0, 0.0, 10.0, 0.0)
    assert await api.scores.get(id_) == third


async def test_put_of_unchanged_values_keeps_the_version(
    api: Api, stores: Stores, make_securities: MakeSecurities
) -> None:
    """Writing the values a score already has changes nothing, version included."""
    (id_,) = make_securities(1)
    first = await api.scores.put(id_, update(3))
    again = await api.scores.upsert(id_, update(3))
    assert again.created is False
    assert again.score == first
    assert stores.score_row(id_) == (1, 3.0, 5.5, 6.5, 7.5)


async def test_if_version_conflict_writes_nothing(
    api: Api, stores: Stores, make_securities: MakeSecurities
) -> None:
    """A stale if_version raises ConflictError and leaves PostgreSQL and Redis as they were."""
    (id_,) = make_securities(1)
    first = await api.scores.put(id_, update(1))
    entry = stores.entry(Kind.SCORE, id_)
    with pytest.raises(ConflictError) as info:
        await api.scores.put(id_, update(9), if_version=2)
    assert (info.value.expected, info.value.actual) == (2, 1)
    assert stores.score_row(id_) == (1, 1.0, 5.5, 6.5, 7.5)
    assert stores.entry(Kind.SCORE, id_) == entry
    assert await api.scores.get(id_) == first

    second = await api.scores.put(id_, update(9), if_version=1)
    assert second.version == 2
    assert holds(stores.entry(Kind.SCORE, id_), second)


async def test_if_version_without_a_score_is_a_conflict(
    api: Api, stores: Stores, make_securities: MakeSecurities
) -> None:
    """if_version on a security that has no score yet conflicts (actual None), writes nothing."""
    (id_,) = make_securities(1)
    with pytest.raises(ConflictError) as info:
        await api.scores.put(id_, update(1), if_version=1)
    assert info.value.actual is None
    assert stores.score_row(id_) is None
    assert stores.entry(Kind.SCORE, id_) is None


@pytest.mark.parametrize("if_version", [None, 1])
async def test_unknown_security_is_not_found_and_nothing_written(
    api: Api, stores: Stores, if_version: int | None
) -> None:
    """A score for a security that does not exist is NotFoundError; nothing is stored anywhere."""
    id_ = unknown_id()
    with pytest.raises(NotFoundError) as info:
        await api.scores.put(id_, update(1), if_version=if_version)
    assert info.value.security_id == id_
    assert stores.score_row(id_) is None
    assert stores.entry(Kind.SCORE, id_) is None


async def test_upsert_many_is_all_or_nothing(
    api: Api, tracing: Tracing, stores: Stores, make_securities: MakeSecurities
) -> None:
    """One unknown id in a batch fails it whole: no row changes, no cache entry changes."""
    first, second = make_securities(2)
    before = await api.scores.put(first, update(1))
    cached = stores.entry(Kind.SCORE, first)
    missing = unknown_id()
    with pytest.raises(NotFoundError) as info:
        await api.scores.upsert_many({first: update(2), second: update(2), missing: update(2)})
    assert info.value.security_id == missing
    assert stores.score_row(first) == (1, 1.0, 5.5, 6.5, 7.5)
    assert stores.score_row(second) is None
    assert stores.entry(Kind.SCORE, first) == cached
    assert stores.entry(Kind.SCORE, second) is None
    assert await api.scores.get(first) == before


async def test_upsert_many_conflict_is_all_or_nothing(
    api: Api, stores: Stores, make_securities: MakeSecurities
) -> None:
    """A conflicting if_version for one item of a batch leaves every item unwritten."""
    first, second = make_securities(2)
    await api.scores.put(first, update(1))
    with pytest.raises(ConflictError):
        await api.scores.upsert_many({second: update(4), first: update(4)}, if_versions={first: 7})
    assert stores.score_row(second) is None
    assert stores.score_row(first) == (1, 1.0, 5.5, 6.5, 7.5)


async def test_upsert_many_writes_a_batch_in_one_transaction_and_one_pipeline(
    api: Api, tracing: Tracing, stores: Stores, make_securities: MakeSecurities
) -> None:
    """A valid batch commits every score in one statement span and caches them in one pipeline."""
    first, second = make_securities(2)
    await api.scores.put(first, update(1))
    tracing.clear()
    writes = await api.scores.upsert_many({first: update(2), second: update(3)})
    assert (writes[first].created, writes[first].score.version) == (False, 2)
    assert (writes[second].created, writes[second].score.version) == (True, 1)
    assert tracing.count("UPSERT securecache.score") == 1
    assert tracing.count("EVALSHA cas") == 1
    for id_, write in writes.items():
        assert holds(stores.entry(Kind.SCORE, id_), write.score)


# -- negative caching, TTLs ----------------------------------------------------------------


async def test_absent_id_is_cached_as_a_marker_with_the_negative_ttl(
    flavour: str, settings: Settings, tracing: Tracing, stores: Stores
) -> None:
    """A missing id is cached as b'0|' for about negative_ttl; the next get needs no query."""
    short = settings.with_changes(ttl_seconds=100.0, negative_ttl_seconds=7.0, ttl_jitter=0.1)
    id_ = unknown_id()
    async with open_api(flavour, short, tracing.provider) as api:
        assert await api.securities.get(id_) is None
        assert decode(Security, stores.entry(Kind.SECURITY, id_)) is ABSENT
        assert 7_000 - 3_000 <= stores.pttl(Kind.SECURITY, id_) <= 7_700
        tracing.clear()
        assert await api.securities.get(id_) is None
        assert tracing.count("SELECT securecache.security") == 0
        assert tracing.sources(Kind.SECURITY) == ["absent"]


async def test_put_supersedes_an_absent_marker(
    api: Api, stores: Stores, make_securities: MakeSecurities
) -> None:
    """A score cached as absent is replaced by the first write, and gets see it at once."""
    (id_,) = make_securities(1)
    assert await api.scores.get(id_) is None
    assert decode(Score, stores.entry(Kind.SCORE, id_)) is ABSENT
    score = await api.scores.put(id_, update(4))
    assert holds(stores.entry(Kind.SCORE, id_), score)
    assert await api.scores.get(id_) == score


async def test_security_inserted_in_sql_is_visible_after_invalidate(
    api: Api, stores: Stores
) -> None:
    """An insert made outside the library hides behind the absent marker until invalidate."""
    id_ = "N" + secrets.token_hex(8)
    assert await api.securities.get(id_) is None
    stores.db.execute(
        "INSERT INTO securecache.security (id, name, symbol, exchange) VALUES (%s, %s, %s, %s)",
        (id_, "Outside Inc", "OUT", "XOUT"),
    )
    assert await api.securities.get(id_) is None, "the absent marker should still be served"
    await api.invalidate(id_)
    found = await api.securities.get(id_)
    assert found is not None
    assert (found.name, found.symbol, found.exchange, found.version) == (
        "Outside Inc",
        "OUT",
        "XOUT",
        1,
    )


async def test_ttls_carry_jitter(
    flavour: str, settings: Settings, stores: Stores, make_securities: MakeSecurities
) -> None:
    """Fills and writes get a TTL in [ttl, ttl*(1+jitter)], not all the same."""
    jittery = settings.with_changes(ttl_seconds=100.0, ttl_jitter=0.2)
    ids = make_securities(40)
    async with open_api(flavour, jittery) as api:
        await api.securities.get_many(ids)
        written = [await api.scores.put(id_, update(1)) for id_ in ids[:10]]
    ttls = [stores.pttl(Kind.SECURITY, id_) for id_ in ids]
    ttls += [stores.pttl(Kind.SCORE, w.security_id) for w in written]
    for ttl in ttls:
        assert 100_000 - 5_000 <= ttl <= 120_000
    assert max(ttls) - min(ttls) > 1_000, f"TTLs look unjittered: {sorted(ttls)}"


# -- untrusted entries ---------------------------------------------------------------------


CORRUPTIONS = {
    "garbage": b"\xff\xfe\x00 garbage",
    "wrong-shape": b'1|{"id": 5, "name": []}',
    "oversized": b"1|" + b"x" * (MAX_ENTRY_BYTES + 1),
    "other-kind": b'1|{"security_id": "A", "growth": 1}',
    "bad-json": b"1|{not json",
    "high-version-garbage": b"999|not json at all",
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_corrupt_entry_is_a_miss_and_gets_replaced(
    api: Api,
    stores: Stores,
    make_securities: MakeSecurities,
    caplog: pytest.LogCaptureFixture,
    corruption: str,
) -> None:
    """An untrusted entry is ignored with a warning; the true value is returned and re-cached."""
    (id_,) = make_securities(1)
    truth = await api.securities.get(id_)
    assert truth is not None
    stores.put_entry(Kind.SECURITY, id_, CORRUPTIONS[corruption])
    caplog.set_level(logging.WARNING, logger="securecache")
    assert await api.securities.get(id_) == truth
    assert any(
        id_ in r.getMessage() and "corrupt" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert holds(stores.entry(Kind.SECURITY, id_), truth)


# -- invalidation --------------------------------------------------------------------------


async def test_invalidate_drops_both_kinds(
    api: Api, stores: Stores, tracing: Tracing, make_securities: MakeSecurities
) -> None:
    """invalidate removes the security and score entries (and leases); the next get refills."""
    (id_,) = make_securities(1, with_scores=True)
    security = await api.securities.get(id_)
    score = await api.scores.get(id_)
    assert stores.entry(Kind.SECURITY, id_) is not None
    assert stores.entry(Kind.SCORE, id_) is not None
    await api.invalidate(id_)
    keys = stores.keys
    every = [keys.value(k, id_) for k in Kind] + [keys.lease(k, id_) for k in Kind]
    assert stores.exists(*every) == 0
    tracing.clear()
    assert await api.securities.get(id_) == security
    assert await api.scores.get(id_) == score
    assert tracing.sources(Kind.SECURITY) == ["postgres"]
    assert tracing.sources(Kind.SCORE) == ["postgres"]


async def test_invalidate_of_an_uncached_id_is_harmless(api: Api) -> None:
    """Invalidating an id with nothing cached (or that does not exist) is not an error."""
    await api.invalidate(unknown_id())
    assert await api.securities.get(unknown_id()) is None


# -- the library's edge --------------------------------------------------------------------


BAD_IDS = ["", "x" * 65, "-x", "a b", "é", "a{b}", "a*"]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_bad_ids_are_refused_before_any_io(api: Api, tracing: Tracing, bad: str) -> None:
    """Every entry point refuses a malformed id with ValidationError and touches no server."""
    tracing.clear()
    with pytest.raises(ValidationError):
        await api.securities.get(bad)
    with pytest.raises(ValidationError):
        await api.scores.get(bad)
    with pytest.raises(ValidationError):
        await api.securities.get_many(["SEC1", bad])
    with pytest.raises(ValidationError):
        await api.scores.get_many([bad])
    with pytest.raises(ValidationError):
        await api.scores.put(bad, update(1))
    with pytest.raises(ValidationError):
        await api.scores.upsert_many({"SEC1": update(1), bad: update(1)})
    with pytest.raises(ValidationError):
        await api.invalidate(bad)
    assert tracing.client_spans() == []


@pytest.mark.parametrize(
    "bad", [123, None, b"SEC1", ["SEC1"]], ids=["int", "none", "bytes", "list"]
)
async def test_non_string_ids_are_refused(api: Api, bad: Any) -> None:
    """Ids that are not strings are a ValidationError, never coerced."""
    with pytest.raises(ValidationError):
        await api.securities.get(bad)
    with pytest.raises(ValidationError):
        await api.scores.put(bad, update(1))


async def test_get_many_refuses_a_bare_string(api: Api, tracing: Tracing) -> None:
    """get_many("SEC1") is a mistake (a string is not a list of ids), not a batch of characters."""
    tracing.clear()
    with pytest.raises(ValidationError):
        await api.securities.get_many("ABC")
    with pytest.raises(ValidationError):
        await api.scores.get_many("ABC")
    assert tracing.client_spans() == []


@pytest.mark.parametrize(
    "bad",
    [
        {"growth": 1, "value": 1, "quality": 1, "momentum": 1},
        (1, 1, 1, 1),
        None,
        "1,1,1,1",
    ],
    ids=["dict", "tuple", "none", "str"],
)
async def test_writes_need_a_score_update(
    api: Api, tracing: Tracing, make_securities: MakeSecurities, bad: Any
) -> None:
    """put and upsert_many accept ScoreUpdate values only; anything else is a ValidationError."""
    (id_,) = make_securities(1)
    tracing.clear()
    with pytest.raises(ValidationError):
        await api.scores.put(id_, bad)
    with pytest.raises(ValidationError):
        await api.scores.upsert_many({id_: bad})
    assert tracing.client_spans() == []


@pytest.mark.parametrize("if_version", [0, -1, True, "1", 1.0])
async def test_bad_if_version_is_refused(
    api: Api, stores: Stores, make_securities: MakeSecurities, if_version: Any
) -> None:
    """if_version must be an integer >= 1; anything else is refused and nothing is written."""
    (id_,) = make_securities(1)
    with pytest.raises(ValidationError):
        await api.scores.put(id_, update(1), if_version=if_version)
    assert stores.score_row(id_) is None


async def test_batch_sizes_are_bounded(api: Api) -> None:
    """An empty write batch and one over the limit are refused."""
    with pytest.raises(ValidationError):
        await api.scores.upsert_many({})
    too_many = {f"B{i}": update(1) for i in range(1001)}
    with pytest.raises(ValidationError):
        await api.scores.upsert_many(too_many)


async def test_no_database_url_is_a_configuration_error(flavour: str, servers: ServerInfo) -> None:
    """A facade without database_url refuses to start (and the twin leaves no thread behind)."""
    settings = Settings(redis_url=servers.redis_url)
    facade: type[SecureCache | sync.SecureCache] = (
        SecureCache if flavour == "async" else sync.SecureCache
    )
    before = set(threading.enumerate())
    with pytest.raises(ConfigurationError) as info:
        facade(settings)
    assert info.value.field == "database_url"
    assert not [t for t in set(threading.enumerate()) - before if t.name == "securecache-loop"]


async def test_reader_role_cannot_put(
    flavour: str,
    settings: Settings,
    database: Database,
    stores: Stores,
    make_securities: MakeSecurities,
) -> None:
    """With the reader's URL reads work but a put is PermissionDeniedError; nothing is written."""
    reader = settings.with_changes(database_url=database.reader_url)
    (id_,) = make_securities(1)
    async with open_api(flavour, reader) as api:
        assert await api.securities.get(id_) is not None
        with pytest.raises(PermissionDeniedError) as info:
            await api.scores.put(id_, update(1))
        assert not isinstance(info.value, psycopg.Error)
        assert isinstance(info.value, SecureCacheError)
    assert stores.score_row(id_) is None
    assert stores.entry(Kind.SCORE, id_) is None


async def test_health_ok(api: Api) -> None:
    """With both servers up, health reports the database up and Redis ok, so it is ready."""
    health = await api.health()
    assert health == Health(database=True, redis="ok")
    assert health.ready


async def test_sync_twin_serves_many_threads(
    settings: Settings, make_securities: MakeSecurities
) -> None:
    """Gets from several threads at once on one sync facade all get the right record."""
    ids = make_securities(12)

    def work(twin: sync.SecureCache, chunk: Sequence[str]) -> list[str | None]:
        results = []
        for id_ in chunk:
            record = twin.securities.get(id_)
            results.append(None if record is None else record.id)
        return results

    twin = await asyncio.to_thread(sync.SecureCache, settings)
    try:
        await asyncio.to_thread(twin.open)
        chunks = [ids[i::4] for i in range(4)]
        results = await asyncio.gather(*(asyncio.to_thread(work, twin, c) for c in chunks))
    finally:
        await asyncio.to_thread(twin.close)
    for chunk, result in zip(chunks, results, strict=True):
        assert result == list(chunk)
