"""The near cache: its rules in memory, and its invalidation across real processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

import redis

from fix_servers import MakeSecurities
from securecache import ScoreUpdate, SecureCache, Settings
from securecache.keys import Kind
from securecache.nearcache import MISSING, NearCache, decode_keys, encode_keys
from securecache.telemetry import Telemetry

KEY = (Kind.SCORE, "SEC1")
WAIT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def near(size: int = 3, max_age: float = 1.0) -> tuple[NearCache, Clock]:
    clock = Clock()
    cache = NearCache(size, max_age, Telemetry(), clock)
    cache.clear(usable=True)
    return cache, clock


def test_an_entry_is_served_until_its_maximum_age() -> None:
    """What was put is served, and past the maximum age it is gone (the staleness bound)."""
    cache, clock = near(max_age=1.0)
    assert cache.put(KEY, "v1", cache.ticket())
    assert cache.get(KEY) == "v1"
    clock.now += 0.99
    assert cache.get(KEY) == "v1"
    clock.now += 0.02
    assert cache.get(KEY) is MISSING


def test_absent_ids_are_remembered_as_none() -> None:
    """None (a known-absent id) is a value, not a miss."""
    cache, _ = near()
    assert cache.put(KEY, None, cache.ticket())
    assert cache.get(KEY) is None


def test_the_least_recently_used_entry_makes_room() -> None:
    """Bounded: the fourth entry of a three-entry cache evicts the one used longest ago."""
    cache, _ = near(size=3)
    for i in range(3):
        cache.put((Kind.SCORE, f"S{i}"), i, cache.ticket())
    assert cache.get((Kind.SCORE, "S0")) == 0  # S1 is now the least recently used
    cache.put((Kind.SCORE, "S3"), 3, cache.ticket())
    assert len(cache) == 3
    assert cache.get((Kind.SCORE, "S1")) is MISSING
    assert cache.get((Kind.SCORE, "S0")) == 0


def test_a_fill_that_raced_an_invalidation_does_not_land() -> None:
    """A read that began before an invalidation of its id may not store what it read; one
    that began after may; other ids are not affected."""
    cache, _ = near()
    before = cache.ticket()
    cache.invalidate([KEY])
    assert not cache.put(KEY, "old", before)
    assert cache.put((Kind.SCORE, "OTHER"), "fine", before)
    assert cache.put(KEY, "new", cache.ticket())
    assert cache.get(KEY) == "new"
    cache.invalidate([KEY])
    assert cache.get(KEY) is MISSING


def test_clearing_refuses_every_fill_begun_before_and_bypasses_while_unusable() -> None:
    """Losing the channel clears and bypasses; fills begun before it never land, even once
    the channel is back."""
    cache, _ = near()
    cache.put(KEY, "v1", cache.ticket())
    before = cache.ticket()
    cache.clear(usable=False)
    assert cache.get(KEY) is MISSING
    assert not cache.put(KEY, "v1", cache.ticket())
    cache.clear(usable=True)
    assert not cache.put(KEY, "v1", before)
    assert cache.put(KEY, "v2", cache.ticket())


def test_channel_messages_round_trip_and_forged_lines_are_ignored() -> None:
    """Messages carry kind and id per line; anything else on the channel is skipped."""
    keys = [(Kind.SCORE, "A"), (Kind.SECURITY, "B:1")]
    assert decode_keys(encode_keys(keys)) == keys
    assert decode_keys(b"nonsense\nscore X\n\xff\xfe") == [(Kind.SCORE, "X")]


# -- over real servers ---------------------------------------------------------------------


async def test_read_your_writes_in_the_writing_process(
    settings: Settings, make_securities: MakeSecurities
) -> None:
    """With the near cache on, a put is what the same process reads next."""
    [sid] = make_securities(1, with_scores=True)
    async with SecureCache(settings.with_changes(local_cache_size=100)) as cache:
        await _subscribed(cache)
        before = await cache.scores.get(sid)
        assert before is not None
        assert await cache.scores.get(sid) == before  # a near hit
        written = await cache.scores.put(
            sid, ScoreUpdate(growth=1.0, value=2.0, quality=3.0, momentum=4.0)
        )
        assert await cache.scores.get(sid) == written


async def _subscribed(cache: SecureCache) -> None:
    subscription = cache._subscription
    assert subscription is not None
    async with asyncio.timeout(WAIT):
        await subscription.subscribed.wait()


def _reader(settings: Settings, sid: str, ready: Any, written: Any, results: Any) -> None:
    """Another process with a near cache whose maximum age is long (30 s): it holds the old
    score, then reports how long after the write it first read the new one."""

    async def run() -> tuple[float, int]:
        async with SecureCache(settings) as cache:
            await _subscribed(cache)
            first = await cache.scores.get(sid)
            assert first is not None
            hits = 0
            for _ in range(5):
                assert await cache.scores.get(sid) == first
            near = cache._near
            assert near is not None
            hits = len(near)
            ready.set()
            written.wait(WAIT)
            began = time.monotonic()
            while time.monotonic() - began < WAIT:
                score = await cache.scores.get(sid)
                assert score is not None
                if score.version > first.version:
                    return time.monotonic() - began, hits
                await asyncio.sleep(0.005)
            return float("inf"), hits

    results.put(asyncio.run(run()))


def test_a_write_in_one_process_is_not_served_stale_by_another(
    settings: Settings, make_securities: MakeSecurities
) -> None:
    """Process B holds a score in its near cache (maximum age 30 s); process A writes it.
    B serves the new version within moments (the invalidation channel), long before the
    maximum age would have let go of the old one."""
    [sid] = make_securities(1, with_scores=True)
    reader_settings = settings.with_changes(local_cache_size=1000, local_cache_ttl_seconds=30)
    context = multiprocessing.get_context("spawn")
    ready, written, results = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=_reader, args=(reader_settings, sid, ready, written, results))
    process.start()
    try:
        assert ready.wait(60), "the reader did not start"

        async def write() -> None:
            async with SecureCache(settings) as writer:
                await writer.scores.put(
                    sid, ScoreUpdate(growth=0.5, value=0.5, quality=0.5, momentum=0.5)
                )

        asyncio.run(write())
        written.set()
        seen_after, held = results.get(timeout=60)
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    print(f"near cache: the other process saw the write after {seen_after * 1000:.1f} ms")
    assert held >= 1  # the old score really was in B's near cache
    assert seen_after < 2.0


async def test_a_cut_invalidation_channel_clears_and_bypasses_the_near_cache(
    settings: Settings, make_securities: MakeSecurities, redis_admin: redis.Redis
) -> None:
    """Killing the subscription's connection (as a Redis restart or a network cut would)
    empties the near cache at once and bypasses it until it has subscribed again."""
    ids = make_securities(5, with_scores=True)
    async with SecureCache(settings.with_changes(local_cache_size=100)) as cache:
        await _subscribed(cache)
        assert len(await cache.scores.get_many(ids)) == 5
        near, subscription = cache._near, cache._subscription
        assert near is not None
        assert subscription is not None
        assert len(near) == 5
        execute: Any = redis_admin.execute_command  # untyped in redis-py
        killed = execute("CLIENT", "KILL", "TYPE", "pubsub")
        assert int(killed) >= 1
        deadline = time.monotonic() + WAIT
        # Polled: the near cache has no event of its own for "cleared" (tests only need it).
        while near.usable and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        assert len(near) == 0
        assert near.get((Kind.SCORE, ids[0])) is MISSING  # bypassed, not just emptied
        async with asyncio.timeout(WAIT):
            await subscription.subscribed.wait()
        assert len(await cache.scores.get_many(ids)) == 5
        assert len(near) == 5
