"""Hits: every key already cached. securecache beside the floor and its peers.

The floor is what any Redis-backed Python cache pays at least: redis-py at its fastest sending
``GET`` (or ``MGET``) and orjson decoding the reply, with no validation and no record type. "At
its fastest" means without a socket timeout: redis-py's default of 5 s bounds each asyncio send
with ``asyncio.wait_for``, a Task per command on Python 3.11 (securecache drops it too, and
bounds each operation with one deadline of its own instead). Peers are configured as their
documentation recommends: aiocache's ``RedisCache`` (JSON serializer), cashews' Redis backend
with a ``secret`` (its signed pickles), dogpile.cache's Redis region. They return plain dicts;
securecache returns validated ``Score`` records. Every contender reads the same records, under
its own keys.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
import redis.asyncio as aioredis

from bench.data import Context, chunks
from bench.measure import Case, Results, compare, unavailable
from bench.workloads import BATCH, CONCURRENCY
from securecache import SecureCache, SecureCacheError
from securecache import sync as securecache_sync

CASHEWS_SECRET = "bench-cashews-secret"  # noqa: S105 - a signing salt for throwaway entries


def batches(ids: list[str]) -> list[list[str]]:
    """Consecutive slices of BATCH ids (the last ones dropped if they do not fill one)."""
    return [ids[i : i + BATCH] for i in range(0, len(ids) - BATCH + 1, BATCH)] or [ids]


async def hit_phase(ctx: Context, results: Results) -> None:
    """Async hits: lone gets, 64 tasks of single gets, get_many, near-cache hits."""
    print("hits (every key already cached), async", flush=True)
    hot = ctx.hot
    n = len(hot)
    groups = batches(hot)
    floor_keys = [ctx.key("floor", i) for i in hot]
    floor_groups = batches(floor_keys)

    async with AsyncExitStack() as stack:
        client = aioredis.Redis.from_url(ctx.redis_url, socket_timeout=None)
        stack.push_async_callback(client.aclose)
        for part in chunks(hot):
            async with client.pipeline(transaction=False) as pipe:
                for id_ in part:
                    pipe.set(ctx.key("floor", id_), orjson.dumps(ctx.dataset.scores[id_]), ex=3600)
                await pipe.execute()

        async def floor_get(i: int) -> object:
            raw = await client.get(floor_keys[i % n])
            return orjson.loads(raw) if raw is not None else None

        async def floor_mget(i: int) -> object:
            raws = await client.mget(floor_groups[i % len(floor_groups)])
            return [orjson.loads(r) for r in raws if r is not None]

        cache = await stack.enter_async_context(SecureCache(ctx.settings))
        await cache.scores.get_many(hot)
        if await cache.scores.get(hot[0]) is None:
            raise RuntimeError("securecache returned no score for a seeded id")

        singles = [
            Case("floor", floor_get, "bare redis-py GET + orjson (floor)"),
            Case("securecache", lambda i: cache.scores.get(hot[i % n])),
        ]
        manies = [
            Case("floor", floor_mget, "bare redis-py MGET + orjson (floor)"),
            Case("securecache", lambda i: cache.scores.get_many(groups[i % len(groups)])),
        ]
        missing: list[tuple[str, str]] = []
        for peer in (_aiocache, _cashews):
            try:
                single, many = await peer(ctx, stack)
            except Exception as exc:  # an optional peer that cannot run is reported, not fatal
                missing.append((_name(peer), _reason(exc)))
                continue
            singles.append(single)
            manies.append(many)

        await compare(singles, ops=ctx.ops, repeat=ctx.repeat)
        results.measured("lone_get", singles)
        for case in singles:
            case.runs.clear()
        # Four times the calls: with 64 tasks, --ops alone is about 30 gets a task, a run of a
        # few tens of milliseconds that one scheduling hiccup of the machine decides.
        await compare(
            singles, shape="concurrent", ops=4 * ctx.ops, repeat=ctx.repeat, tasks=CONCURRENCY
        )
        for case in singles:
            case.note = {
                "floor": "one GET per call",
                "securecache": "gets waiting together travel as one MGET",
            }.get(case.contender, "one GET per call")
        results.measured("concurrent_get_64", singles)
        await compare(manies, ops=max(1, ctx.ops // 10), repeat=ctx.repeat)
        results.measured("get_many_100", manies, keys_per_op=BATCH)
        for workload in ("lone_get", "concurrent_get_64", "get_many_100"):
            for contender, reason in missing:
                results.add(unavailable(workload, contender, reason))

    await near_phase(ctx, results)


async def _aiocache(ctx: Context, stack: AsyncExitStack) -> tuple[Case, Case]:
    """aiocache's RedisCache with its JSON serializer, as its README sets it up."""
    from aiocache import RedisCache
    from aiocache.serializers import JsonSerializer

    url = urlsplit(ctx.redis_url)
    cache = RedisCache(
        serializer=JsonSerializer(),
        endpoint=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        password=url.password,
        namespace=ctx.key("aiocache", ""),
    )
    stack.push_async_callback(cache.close)
    hot = ctx.hot
    n = len(hot)
    await cache.multi_set([(i, ctx.dataset.scores[i]) for i in hot], ttl=3600)
    if await cache.get(hot[0]) is None:
        raise RuntimeError("aiocache returned nothing for a key it was given")
    groups = batches(hot)
    return (
        Case("aiocache", lambda i: cache.get(hot[i % n])),
        Case(
            "aiocache",
            lambda i: cache.multi_get(groups[i % len(groups)]),
            "aiocache RedisCache multi_get",
        ),
    )


async def _cashews(ctx: Context, stack: AsyncExitStack) -> tuple[Case, Case]:
    """cashews' Redis backend; its docs recommend a ``secret`` (values are signed pickles)."""
    from cashews import Cache

    cache = Cache()
    cache.setup(ctx.redis_url, secret=CASHEWS_SECRET, suppress=False)
    stack.push_async_callback(cache.close)
    keys = [ctx.key("cashews", i) for i in ctx.hot]
    n = len(keys)
    await cache.set_many({k: ctx.dataset.scores[i] for k, i in zip(keys, ctx.hot, strict=True)})
    for key in keys:
        await cache.expire(key, 3600)
    if await cache.get(keys[0]) is None:
        raise RuntimeError("cashews returned nothing for a key it was given")
    groups = batches(keys)
    return (
        Case("cashews", lambda i: cache.get(keys[i % n])),
        Case(
            "cashews",
            lambda i: cache.get_many(*groups[i % len(groups)]),
            "cashews get_many",
        ),
    )


async def near_phase(ctx: Context, results: Results) -> None:
    """In-process hits: the near cache, cashews' client-side cache, cachetools."""
    print("near-cache hits (in-process)", flush=True)
    hot = ctx.hot
    n = len(hot)
    cases: list[Case] = []
    async with AsyncExitStack() as stack:
        try:
            settings = ctx.settings.with_changes(
                local_cache_size=10_000, local_cache_ttl_seconds=1.0
            )
            near = await stack.enter_async_context(SecureCache(settings))
        except (SecureCacheError, TypeError) as exc:
            results.add(unavailable("near_hit", "securecache_near", _reason(exc)))
        else:

            async def fill() -> None:
                await near.scores.get_many(hot)
                for id_ in hot:
                    await near.scores.get(id_)

            cases.append(
                Case(
                    "securecache_near",
                    lambda i: near.scores.get(hot[i % n]),
                    "securecache near cache (size 10000, max age 1 s)",
                    prepare=fill,
                )
            )
        try:
            cases.append(await _cashews_client_side(ctx, stack))
        except Exception as exc:  # optional peer
            results.add(unavailable("near_hit", "cashews_client_side", _reason(exc)))

        from cachetools import TTLCache

        local: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=10_000, ttl=300)
        for id_ in hot:
            local[id_] = ctx.dataset.scores[id_]
        cases.append(
            Case(
                "cachetools",
                lambda i: local.get(hot[i % n]),
                note="not shared between processes, no invalidation: context only",
                sync=True,
            )
        )
        await compare(cases, ops=ctx.ops, repeat=ctx.repeat)
        results.measured("near_hit", cases)


async def _cashews_client_side(ctx: Context, stack: AsyncExitStack) -> Case:
    """cashews with ``client_side=True``: Redis tracking (BCAST) invalidates its memory."""
    from cashews import Cache

    cache = Cache()
    cache.setup(
        ctx.redis_url,
        client_side=True,
        client_side_prefix=ctx.key("cashews_cs", ""),
        secret=CASHEWS_SECRET,
        suppress=False,
    )
    stack.push_async_callback(cache.close)
    await cache.init()
    hot = ctx.hot
    n = len(hot)
    for id_ in hot:
        await cache.set(id_, ctx.dataset.scores[id_], expire=3600)

    async def fill() -> None:
        for id_ in hot:
            await cache.get(id_)

    await fill()
    if await cache.get(hot[0]) is None:
        raise RuntimeError("cashews client-side returned nothing for a key it was given")
    return Case(
        "cashews_client_side",
        lambda i: cache.get(hot[i % n]),
        note="memory in front of Redis, invalidated by Redis client tracking",
        prepare=fill,
    )


async def sync_phase(ctx: Context, results: Results) -> None:
    """Sync hits: the sync twin beside bare sync redis-py and dogpile.cache."""
    print("hits, sync", flush=True)
    hot = ctx.hot
    n = len(hot)
    groups = batches(hot)
    floor_keys = [ctx.key("floor", i) for i in hot]
    floor_groups = batches(floor_keys)
    client = redis.Redis.from_url(ctx.redis_url)

    def floor_get(i: int) -> object:
        raw = client.get(floor_keys[i % n])
        return orjson.loads(raw) if isinstance(raw, bytes) else None

    def floor_mget(i: int) -> object:
        raws: Any = client.mget(floor_groups[i % len(floor_groups)])
        return [orjson.loads(r) for r in raws if r is not None]

    try:
        with securecache_sync.SecureCache(ctx.settings) as cache:
            cache.scores.get_many(hot)
            singles = [
                Case("floor", floor_get, "bare sync redis-py GET + orjson (floor)", sync=True),
                Case("securecache", lambda i: cache.scores.get(hot[i % n]), sync=True),
            ]
            manies = [
                Case("floor", floor_mget, "bare sync redis-py MGET + orjson (floor)", sync=True),
                Case(
                    "securecache",
                    lambda i: cache.scores.get_many(groups[i % len(groups)]),
                    sync=True,
                ),
            ]
            try:
                singles.append(_dogpile(ctx))
            except Exception as exc:  # optional peer
                results.add(unavailable("sync_lone_get", "dogpile", _reason(exc)))
            await compare(singles, ops=ctx.ops, repeat=ctx.repeat)
            results.measured("sync_lone_get", singles)
            await compare(manies, ops=max(1, ctx.ops // 10), repeat=ctx.repeat)
            results.measured("sync_get_many_100", manies, keys_per_op=BATCH)
    finally:
        client.close()


def _dogpile(ctx: Context) -> Case:
    """A dogpile.cache region on its Redis backend (values pickled)."""
    from dogpile.cache import make_region

    prefix = ctx.key("dogpile", "")
    region = make_region(key_mangler=lambda k: prefix + k).configure(
        "dogpile.cache.redis",
        arguments={"url": ctx.redis_url, "redis_expiration_time": 3600},
    )
    hot = ctx.hot
    n = len(hot)
    region.set_multi({i: ctx.dataset.scores[i] for i in hot})
    if not isinstance(region.get(hot[0]), dict):
        raise RuntimeError("dogpile.cache returned nothing for a key it was given")
    get: Callable[[str], object] = region.get
    return Case("dogpile", lambda i: get(hot[i % n]), "dogpile.cache redis region", sync=True)


def _name(peer: Callable[..., object]) -> str:
    return getattr(peer, "__name__", "peer").lstrip("_")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
