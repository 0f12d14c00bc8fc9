"""Misses: keys not in Redis, so PostgreSQL answers and the cache is filled.

securecache is compared with a naive cache-aside built from the same clients (redis-py and a
psycopg pool of the library's default size): ``GET``, on a miss ``SELECT`` then ``SET``. The
naive one takes no lease and checks no version, so a slow fill can overwrite a newer write
(see docs/consistency.md): it is the speed to match, not a design to copy. Keys are made cold
before each run, outside the timing. PostgreSQL statements are counted: the library's through
its ``securecache.db.queries`` counter (an in-memory OpenTelemetry reader), the naive one's
by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum
from psycopg_pool import AsyncConnectionPool

from bench.data import SCORE_COLUMNS, Context, chunks, score_dict
from bench.measure import Case, Results, compare
from bench.workloads import CONCURRENCY
from securecache import ScoreUpdate, SecureCache

QUERIES_METRIC = "securecache.db.queries"
REDIS_ERRORS_METRIC = "securecache.redis.errors"


def counter_reader(reader: InMemoryMetricReader, name: str) -> Callable[[], float]:
    """A function returning the current total of counter ``name`` (0 before its first add)."""

    def read() -> float:
        data = reader.get_metrics_data()
        total = 0.0
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name and isinstance(metric.data, Sum):
                        total += sum(float(p.value) for p in metric.data.data_points)
        return total

    return read


class NaiveCacheAside:
    """``GET``; on a miss ``SELECT`` then ``SET``: no lease, no version, no single-flight.

    Pools of the library's default sizes (10 PostgreSQL, 50 Redis connections), waiting for
    a free connection rather than failing when all are busy (redis-py's default).
    """

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.queries = 0
        self.redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                ctx.redis_url, max_connections=ctx.settings.redis_max_connections
            )
        )
        self.pool = AsyncConnectionPool(
            ctx.dataset.writer_url,
            min_size=ctx.settings.db_pool_min_size,
            max_size=ctx.settings.db_pool_max_size,
            open=False,
            kwargs={"autocommit": True},
        )

    async def get(self, id_: str) -> object:
        key = self._ctx.key("naive", id_)
        raw = await self.redis.get(key)
        if raw is not None:
            return orjson.loads(raw)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {SCORE_COLUMNS} FROM securecache.score"  # noqa: S608 - a constant
                " WHERE security_id = %s",
                (id_,),
            )
            found = await cur.fetchone()
        self.queries += 1
        value = score_dict(found) if found is not None else None
        await self.redis.set(key, orjson.dumps(value), ex=300)
        return value

    async def cool(self, ids: list[str]) -> None:
        for part in chunks([self._ctx.key("naive", i) for i in ids]):
            await self.redis.delete(*part)

    def count(self) -> float:
        return float(self.queries)

    async def aclose(self) -> None:
        await self.pool.close()
        await self.redis.aclose()


async def miss_phase(ctx: Context, results: Results, herd: int) -> None:
    """Sequential misses, misses at 64 tasks, a herd on one key, and writes."""
    print("misses (keys cold in Redis)", flush=True)
    cold = ctx.cold[: min(ctx.ops, 1000, len(ctx.cold) - 1)]
    herd_id = ctx.cold[-1]
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    queries = counter_reader(reader, QUERIES_METRIC)
    redis_errors = counter_reader(reader, REDIS_ERRORS_METRIC)
    naive = NaiveCacheAside(ctx)
    await naive.pool.open()

    async with SecureCache(ctx.settings, meter_provider=provider) as cache:

        async def cool(ids: list[str]) -> None:
            # A few at a time: a burst past the Redis pool's size fails (and trips the
            # circuit breaker) instead of waiting, which would leave keys warm.
            before = redis_errors()
            for part in chunks(ids, 16):
                await asyncio.gather(*(cache.invalidate(i) for i in part))
            if redis_errors() > before:
                raise RuntimeError("Redis failed while keys were made cold: no valid miss figures")

        if await cache.scores.get(cold[0]) is None:
            raise RuntimeError("securecache returned no score for a seeded id")

        def cases(ids: list[str]) -> list[Case]:
            m = len(ids)
            return [
                Case(
                    "securecache",
                    lambda i: cache.scores.get(ids[i % m]),
                    note="lease, PostgreSQL, versioned fill",
                    prepare=lambda: cool(ids),
                    counters={"queries": queries, "redis_errors": redis_errors},
                ),
                Case(
                    "naive",
                    lambda i: naive.get(ids[i % m]),
                    note="no lease, no version check: unsafe under races",
                    prepare=lambda: naive.cool(ids),
                    counters={"queries": naive.count},
                ),
            ]

        sequential = cases(cold)
        await compare(sequential, ops=len(cold), repeat=ctx.repeat, warmup=min(len(cold), 50))
        results.measured("miss_sequential", sequential)

        concurrent = cases(cold)
        await compare(
            concurrent,
            shape="concurrent",
            ops=len(cold),
            repeat=ctx.repeat,
            tasks=CONCURRENCY,
            warmup=0,
        )
        for case in concurrent:
            if case.contender == "securecache":
                case.note = "misses waiting together share one query"
        results.measured("miss_concurrent_64", concurrent)

        herd_cases = cases([herd_id])
        for case in herd_cases:
            case.note = f"{herd} gets of one cold key at once"
        await compare(herd_cases, shape="herd", ops=herd, repeat=ctx.repeat, warmup=0)
        results.measured("cold_herd_500", herd_cases)

        writes = cold[: min(len(cold), 500)]
        put = [
            Case(
                "securecache",
                lambda i: cache.scores.put(
                    writes[i % len(writes)],
                    ScoreUpdate(growth=(i % 100) / 10, value=5, quality=5, momentum=5),
                ),
                note="commit in PostgreSQL, then the versioned cache write",
                counters={"queries": queries, "redis_errors": redis_errors},
            )
        ]
        await compare(put, ops=len(writes), repeat=ctx.repeat, warmup=min(len(writes), 50))
        results.measured("put", put)
    await naive.aclose()
    provider.shutdown()
