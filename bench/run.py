"""Benchmarks: securecache beside bare redis-py and other Python caches, in one run.

Every contender reads the same Score records from the same Redis (and, on a miss, the same
PostgreSQL), in the same process, one after the other, so the figures are comparable. Run
with ``nox -s bench`` (or ``make bench``); results go to ``bench/results.json`` and a table
to ``bench/results.md``. With ``SECURECACHE_DATABASE_URL`` / ``SECURECACHE_REDIS_URL`` set it
uses those servers (the database URL must be an administrator's); otherwise embedded ones.

Options: ``--ops N`` operations per measurement, ``--repeat R`` measurements (the median
is reported), ``--keys K`` securities seeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import psycopg
import redis
import redis.asyncio as aioredis
from psycopg import sql
from redis.utils import HIREDIS_AVAILABLE

import securecache
from securecache import ScoreUpdate, SecureCache, Settings
from securecache import sync as securecache_sync
from securecache.ops.dev import resolve_servers
from securecache.ops.migrations import migrate
from securecache.ops.provision import derive_url

HERE = Path(__file__).parent
DATABASE = "securecache_bench"
CONCURRENCY = 100
BATCH = 100


def seed(admin_url: str, keys: int) -> list[str]:
    """A fresh database with ``keys`` securities and scores; returns its URL's ids."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    bench_admin = derive_url(admin_url, dbname=DATABASE)
    migrate(bench_admin, writer_password="bench-writer")
    with psycopg.connect(bench_admin, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO securecache.security (id, name, symbol, exchange)"
            " SELECT format('SEC%%s', lpad(g::text, 6, '0')), format('Company %%s', g),"
            " format('T%%s', g), 'XNYS' FROM generate_series(1, %s) g",
            (keys,),
        )
        conn.execute(
            "INSERT INTO securecache.score (security_id, growth, value, quality, momentum)"
            " SELECT id, 5, 6, 7, 8 FROM securecache.security"
        )
    return [f"SEC{i:06d}" for i in range(1, keys + 1)]


class Timer:
    """Runs one workload ``repeat`` times and keeps the median throughput and latencies."""

    def __init__(self, ops: int, repeat: int) -> None:
        self.ops = ops
        self.repeat = repeat
        self.results: list[dict[str, Any]] = []

    def record(
        self,
        workload: str,
        contender: str,
        runs: list[tuple[float, list[float]]],
        keys_per_op: int,
        note: str = "",
    ) -> None:
        throughput = statistics.median(len(lat) * keys_per_op / wall for wall, lat in runs)
        latencies = sorted(x for _, lat in runs for x in lat)
        result = {
            "workload": workload,
            "contender": contender,
            "keys_per_second": round(throughput),
            "p50_us": round(latencies[len(latencies) // 2] * 1e6, 1),
            "p99_us": round(latencies[int(len(latencies) * 0.99)] * 1e6, 1),
            "note": note,
        }
        self.results.append(result)
        print(
            f"  {workload:<28} {contender:<34} {result['keys_per_second']:>9,} keys/s"
            f"  p50 {result['p50_us']:>8} us  p99 {result['p99_us']:>8} us",
            flush=True,
        )

    async def sequential(
        self, op: Callable[[int], Awaitable[object]]
    ) -> list[tuple[float, list[float]]]:
        runs = []
        for _ in range(self.repeat):
            latencies = []
            start = time.perf_counter()
            for i in range(self.ops):
                t0 = time.perf_counter()
                await op(i)
                latencies.append(time.perf_counter() - t0)
            runs.append((time.perf_counter() - start, latencies))
        return runs

    async def concurrent(
        self, op: Callable[[int], Awaitable[object]]
    ) -> list[tuple[float, list[float]]]:
        """``ops`` calls spread over CONCURRENCY tasks that run at the same time."""
        runs = []
        per_task = max(1, self.ops // CONCURRENCY)
        for _ in range(self.repeat):
            latencies: list[float] = []

            async def worker(w: int, latencies: list[float] = latencies) -> None:
                for i in range(per_task):
                    t0 = time.perf_counter()
                    await op(w * per_task + i)
                    latencies.append(time.perf_counter() - t0)

            start = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
            runs.append((time.perf_counter() - start, latencies))
        return runs

    def sync_sequential(self, op: Callable[[int], object]) -> list[tuple[float, list[float]]]:
        runs = []
        for _ in range(self.repeat):
            latencies = []
            start = time.perf_counter()
            for i in range(self.ops):
                t0 = time.perf_counter()
                op(i)
                latencies.append(time.perf_counter() - t0)
            runs.append((time.perf_counter() - start, latencies))
        return runs


async def bench_hot(timer: Timer, ids: list[str], settings: Settings, redis_url: str) -> None:
    """Reads of keys already in Redis: the common case of a shared cache."""
    hot = ids[:1000]
    n = len(hot)
    print("hot reads (every key already cached)")
    async with SecureCache(settings) as cache:
        await cache.scores.get_many(hot)  # warm
        timer.record(
            "get, sequential",
            "securecache",
            await timer.sequential(lambda i: cache.scores.get(hot[i % n])),
            1,
        )
        timer.record(
            "get, 100 concurrent tasks",
            "securecache",
            await timer.concurrent(lambda i: cache.scores.get(hot[i % n])),
            1,
            "gets of one loop turn share one MGET",
        )
        timer.record(
            "get_many of 100",
            "securecache",
            await timer.sequential(
                lambda i: cache.scores.get_many(hot[(i * BATCH) % n : (i * BATCH) % n + BATCH])
            ),
            BATCH,
        )

    # The floor: what any Redis-backed Python cache pays at least (GET + decode).
    client = aioredis.Redis.from_url(redis_url)
    prefix = settings.key_prefix
    keys = [f"{prefix}:v1:{{{i}}}:score" for i in hot]

    async def bare_get(i: int) -> object:
        raw = await client.get(keys[i % n])
        return orjson.loads(raw.partition(b"|")[2]) if isinstance(raw, bytes) else None

    async def bare_mget(i: int) -> object:
        start = (i * BATCH) % n
        raws = await client.mget(keys[start : start + BATCH])
        return [orjson.loads(r.partition(b"|")[2]) for r in raws if isinstance(r, bytes)]

    timer.record(
        "get, sequential", "redis-py GET + orjson (floor)", await timer.sequential(bare_get), 1
    )
    timer.record(
        "get, 100 concurrent tasks",
        "redis-py GET + orjson (floor)",
        await timer.concurrent(bare_get),
        1,
        "one GET per call",
    )
    timer.record(
        "get_many of 100",
        "redis-py MGET + orjson (floor)",
        await timer.sequential(bare_mget),
        BATCH,
    )
    await client.aclose()

    await bench_aiocache(timer, hot, redis_url)

    with securecache_sync.SecureCache(settings) as sync_cache:
        sync_cache.scores.get_many(hot)
        timer.record(
            "get, sequential",
            "securecache.sync",
            timer.sync_sequential(lambda i: sync_cache.scores.get(hot[i % n])),
            1,
            "sync twin: one thread hop per call",
        )
    bench_dogpile(timer, hot, redis_url)
    bench_cachetools(timer, hot)


async def bench_aiocache(timer: Timer, hot: list[str], redis_url: str) -> None:
    from aiocache import RedisCache
    from aiocache.serializers import JsonSerializer

    url = urlsplit(redis_url)
    cache = RedisCache(
        serializer=JsonSerializer(),
        endpoint=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        password=url.password,
        namespace="benchaio",
    )
    value = {"growth": 5.0, "value": 6.0, "quality": 7.0, "momentum": 8.0}
    for key in hot:
        await cache.set(key, value)
    n = len(hot)
    timer.record(
        "get, sequential",
        "aiocache RedisCache",
        await timer.sequential(lambda i: cache.get(hot[i % n])),
        1,
    )
    timer.record(
        "get, 100 concurrent tasks",
        "aiocache RedisCache",
        await timer.concurrent(lambda i: cache.get(hot[i % n])),
        1,
    )
    timer.record(
        "get_many of 100",
        "aiocache RedisCache multi_get",
        await timer.sequential(
            lambda i: cache.multi_get(hot[(i * BATCH) % n : (i * BATCH) % n + BATCH])
        ),
        BATCH,
    )
    await cache.clear(namespace="benchaio")
    await cache.close()


def bench_dogpile(timer: Timer, hot: list[str], redis_url: str) -> None:
    from dogpile.cache import make_region

    region = make_region(key_mangler=lambda k: f"benchdp:{k}").configure(
        "dogpile.cache.redis",
        arguments={"url": redis_url, "redis_expiration_time": 300},
    )
    value = {"growth": 5.0, "value": 6.0, "quality": 7.0, "momentum": 8.0}
    for key in hot:
        region.set(key, value)
    n = len(hot)
    timer.record(
        "get, sequential",
        "dogpile.cache redis (sync)",
        timer.sync_sequential(lambda i: region.get(hot[i % n])),
        1,
    )
    for key in hot:
        region.delete(key)


def bench_cachetools(timer: Timer, hot: list[str]) -> None:
    from cachetools import TTLCache

    local: TTLCache[str, dict[str, float]] = TTLCache(maxsize=10_000, ttl=300)
    for key in hot:
        local[key] = {"growth": 5.0}
    n = len(hot)
    timer.record(
        "get, sequential",
        "cachetools TTLCache (in-process)",
        timer.sync_sequential(lambda i: local.get(hot[i % n])),
        1,
        "not shared between processes: context only",
    )


async def bench_cold(
    timer: Timer, ids: list[str], settings: Settings, database_url: str, redis_url: str
) -> None:
    """Reads that miss Redis: PostgreSQL, then a fill."""
    print("cold reads (every key missing from Redis)")
    cold_ops = min(timer.ops, 1000)
    cold = Timer(cold_ops, timer.repeat)
    async with SecureCache(settings) as cache:

        def fresh(i: int, run: list[int]) -> str:
            return ids[(run[0] * cold_ops + i) % len(ids)]

        run = [0]

        async def miss(i: int) -> object:
            key = fresh(i, run)
            await cache.invalidate(key)
            return await cache.scores.get(key)

        runs = []
        for r in range(timer.repeat):
            run[0] = r
            runs += await Timer(cold_ops, 1).sequential(miss)
        timer.record(
            "get miss + fill, sequential",
            "securecache",
            runs,
            1,
            "includes the invalidate (DEL) that makes each key cold",
        )

    # Naive cache-aside with bare clients: GET, SELECT, SET (no lease, no version check).
    client = aioredis.Redis.from_url(redis_url)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:

        async def naive(i: int) -> object:
            key = ids[i % len(ids)]
            rkey = f"naive:{key}"
            await client.delete(rkey)
            raw = await client.get(rkey)
            if raw is None:
                cur = await conn.execute(
                    "SELECT security_id, growth, value, quality, momentum, version, updated_at"
                    " FROM securecache.score WHERE security_id = %s",
                    (key,),
                )
                row = await cur.fetchone()
                raw = orjson.dumps(row)
                await client.set(rkey, raw, px=300_000)
            return raw

        timer.record(
            "get miss + fill, sequential",
            "naive cache-aside (redis-py + psycopg)",
            await cold.sequential(naive),
            1,
            "no lease, no CAS: unsafe under races",
        )
    await client.aclose()


async def bench_writes(timer: Timer, ids: list[str], settings: Settings) -> None:
    print("writes (commit in PostgreSQL, then Redis)")
    writes = Timer(min(timer.ops, 1000), timer.repeat)
    async with SecureCache(settings) as cache:

        async def put(i: int) -> object:
            return await cache.scores.put(
                ids[i % len(ids)],
                ScoreUpdate(growth=(i % 100) / 10, value=5, quality=5, momentum=5),
            )

        timer.record("put (write-through)", "securecache", await writes.sequential(put), 1)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    timer = Timer(args.ops, args.repeat)
    with resolve_servers(name="bench") as servers:
        print(f"servers: {servers.describe()}")
        ids = seed(servers.admin_url, args.keys)
        writer_url = derive_url(
            servers.admin_url, dbname=DATABASE, user="securecache_writer", password="bench-writer"
        )
        settings = Settings(
            database_url=writer_url,
            redis_url=servers.redis_url,
            key_prefix="bench",
            ttl_seconds=600,
        )
        flush = redis.Redis.from_url(servers.redis_url)
        for key in flush.scan_iter("bench:*", count=1000):
            flush.delete(key)
        await bench_hot(timer, ids, settings, servers.redis_url)
        await bench_cold(timer, ids, settings, writer_url, servers.redis_url)
        await bench_writes(timer, ids, settings)
        for pattern in ("bench:*", "naive:*"):
            for key in flush.scan_iter(pattern, count=1000):
                flush.delete(key)
        flush.close()
        meta = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "nox -s bench -- " + " ".join(sys.argv[1:]),
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "servers": servers.describe(),
            "securecache": securecache.__version__,
            "redis_parser": "hiredis" if HIREDIS_AVAILABLE else "python",
            "ops": args.ops,
            "repeat": args.repeat,
            "concurrency": CONCURRENCY,
        }
    args.output.write_text(json.dumps({"meta": meta, "results": timer.results}, indent=2) + "\n")
    table = [
        f"Run: `{meta['command']}` on {meta['date']} ({meta['machine']}, Python {meta['python']}; "
        f"{meta['servers']}; redis-py parser: {meta['redis_parser']}). "
        f"Median of {args.repeat} runs.",
        "",
        "| workload | contender | keys/s | p50 µs | p99 µs | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    table += [
        f"| {r['workload']} | {r['contender']} | {r['keys_per_second']:,} | {r['p50_us']} | "
        f"{r['p99_us']} | {r['note']} |"
        for r in timer.results
    ]
    args.output.with_suffix(".md").write_text("\n".join(table) + "\n")
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
