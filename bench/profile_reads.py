"""Where a cached read spends its CPU: securecache beside bare redis-py, in process time.

``python -m bench.profile_reads`` with ``SECURECACHE_DATABASE_URL`` (a migrated, seeded
database, e.g. the one ``make run`` prints) and ``SECURECACHE_REDIS_URL``. Process time, not
wall time, so that a busy machine moves the figures less: Redis and PostgreSQL run in other
processes. For each path it prints the CPU microseconds a call costs this process, for bare
redis-py (``GET``/``MGET`` and ``orjson.loads``, no socket timeout) and for securecache
(``scores.get``, ``scores.get_many`` of 100), every key cached; ``--profile`` adds cProfile's
top functions of ``get_many``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Awaitable, Callable, Sequence

import orjson
import redis.asyncio as aioredis

from securecache import SecureCache, Settings


async def cpu_per_call(call: Callable[[int], Awaitable[object]], calls: int) -> float:
    """CPU microseconds of this process per ``call(i)``, after a warm-up."""
    for i in range(min(200, calls)):
        await call(i)
    started = time.process_time()
    for i in range(calls):
        await call(i)
    return (time.process_time() - started) / calls * 1e6


async def profile(calls: int, rounds: int, show_profile: bool) -> None:
    settings = Settings.from_env(key_prefix="profile-reads")
    async with SecureCache(settings) as cache:
        ids = [s.id for s in (await cache.securities.list(limit=200)).items]
        batch = ids[:100]
        found = await cache.scores.get_many(ids)
        assert settings.redis_url is not None
        bare = aioredis.Redis.from_url(settings.redis_url, socket_timeout=None)
        keys = [f"profile-reads:bare:{i}" for i in ids]
        for id_, key in zip(ids, keys, strict=True):
            await bare.set(key, orjson.dumps(found[id_].security_id), ex=600)

        async def bare_get(i: int) -> object:
            return orjson.loads(await bare.get(keys[i % len(keys)]) or b"null")

        async def bare_mget(_: int) -> object:
            return [orjson.loads(r) for r in await bare.mget(keys[:100]) if r is not None]

        async def one(i: int) -> object:
            return await cache.scores.get(ids[i % len(ids)])

        async def many(_: int) -> object:
            return await cache.scores.get_many(batch)

        paths = [
            ("bare redis-py GET + orjson", bare_get, calls),
            ("securecache scores.get", one, calls),
            ("bare redis-py MGET of 100 + orjson", bare_mget, max(1, calls // 10)),
            ("securecache scores.get_many of 100", many, max(1, calls // 10)),
        ]
        figures: dict[str, list[float]] = {name: [] for name, _, _ in paths}
        for _ in range(rounds):  # interleaved, so that a slow moment hits every path alike
            for name, call, n in paths:
                figures[name].append(await cpu_per_call(call, n))
        for name, values in figures.items():
            print(f"{name:40} {sorted(values)[len(values) // 2]:8.1f} us CPU a call (median)")
        if show_profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(max(1, calls // 10)):
                await many(i)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        await bare.delete(*keys)
        await bare.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000, help="calls per round (gets)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile of get_many")
    args = parser.parse_args(argv)
    asyncio.run(profile(args.calls, args.rounds, args.profile))


if __name__ == "__main__":
    main()
