"""Where a cached read spends its CPU: securecache beside bare redis-py, in process time.

``python -m bench.profile_reads`` with ``SECURECACHE_DATABASE_URL`` (a migrated, seeded
database, e.g. the one ``make run`` prints) and ``SECURECACHE_REDIS_URL``. Process time, not
wall time, so that a busy machine moves the figures less: Redis and PostgreSQL run in other
processes. For each path it prints the CPU microseconds a call costs this process, for bare
redis-py (``GET``/``MGET`` and ``orjson.loads``, no socket timeout) and for securecache
(``scores.get``, ``scores.get_many`` of 100), every key cached; ``--profile`` adds cProfile's
top functions of ``get_many``; ``--policy`` adds the same two calls over a Redis backend that
answers each MGET at once from memory (the entries read from Redis beforehand), which leaves
the policy's own CPU: validation, the registry, decoding, answering.
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
from securecache.keys import KeyScheme, Kind
from securecache.readthrough import CacheBackend


async def cpu_per_call(call: Callable[[int], Awaitable[object]], calls: int) -> float:
    """CPU microseconds of this process per ``call(i)``, after a warm-up."""
    for i in range(min(200, calls)):
        await call(i)
    started = time.process_time()
    for i in range(calls):
        await call(i)
    return (time.process_time() - started) / calls * 1e6


class InstantEntries:
    """A backend whose ``entries`` answers from memory, at once; the rest is the real one."""

    def __init__(self, inner: CacheBackend) -> None:
        self.inner = inner
        self.known: dict[str, bytes | None] = {}

    async def entries(self, keys: Sequence[str]) -> list[bytes | None] | None:
        return [self.known.get(k) for k in keys]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def policy_only(settings: Settings, calls: int) -> None:
    """CPU a call of ``scores.get`` and ``get_many(100)`` with no Redis round trip."""
    backends: list[InstantEntries] = []

    def instant(inner: CacheBackend) -> CacheBackend:
        backends.append(InstantEntries(inner))
        return backends[-1]  # type: ignore[return-value]

    async with SecureCache(settings, wrap_redis=instant) as cache:
        ids = [s.id for s in (await cache.securities.list(limit=100)).items]
        keys = KeyScheme(settings.key_prefix).values(Kind.SCORE, ids)
        raws = await backends[0].inner.entries(keys)
        assert raws is not None
        backends[0].known.update(zip(keys, raws, strict=True))

        async def one(i: int) -> object:
            return await cache.scores.get(ids[i % len(ids)])

        async def many(_: int) -> object:
            return await cache.scores.get_many(ids)

        single = await cpu_per_call(one, calls)
        batch = await cpu_per_call(many, max(1, calls // 10))
    print(f"{'policy alone: scores.get':40} {single:8.1f} us CPU a call")
    print(f"{'policy alone: scores.get_many of 100':40} {batch:8.1f} us CPU a call")


async def profile(calls: int, rounds: int, show_profile: bool, policy: bool) -> None:
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
    if policy:
        await policy_only(settings, calls)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000, help="calls per round (gets)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile of get_many")
    parser.add_argument("--policy", action="store_true", help="also with no Redis round trip")
    args = parser.parse_args(argv)
    asyncio.run(profile(args.calls, args.rounds, args.profile, args.policy))


if __name__ == "__main__":
    main()
