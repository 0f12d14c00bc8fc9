"""Failures around the cache: PostgreSQL away, callers cancelled, writers colliding."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from entries import decode
from fix_servers import MakeSecurities
from interposed import delaying
from securecache import (
    Score,
    ScoreUpdate,
    SecureCache,
    Settings,
    UnavailableError,
    ValidationError,
    codec,
)
from securecache.cache import CacheWrite
from securecache.keys import KeyScheme, Kind

UPDATE = ScoreUpdate(growth=1, value=2, quality=3, momentum=4)


def entry_at(client: redis.Redis, key: str) -> Score | codec.Marker | None:
    """The score entry at ``key``, decoded as the library would."""
    raw = client.get(key)
    assert raw is None or isinstance(raw, bytes)
    return decode(Score, raw)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_cached_reads_survive_postgresql_down_even_beside_a_miss(
    settings: Settings, make_securities: MakeSecurities
) -> None:
    """With PostgreSQL unreachable, a cached id batched with an uncached one is still served;
    only the miss fails with UnavailableError."""
    cached, uncached = make_securities(2, with_scores=True)
    async with SecureCache(settings) as warm:
        assert await warm.scores.get(cached) is not None
    assert settings.database_url is not None
    parts = urlsplit(settings.database_url)
    host = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    nowhere = urlunsplit(parts._replace(netloc=f"{host}:{closed_port()}"))
    down = settings.with_changes(database_url=nowhere, db_timeout_seconds=0.5)
    async with SecureCache(down) as cache:
        hit, miss = await asyncio.gather(
            cache.scores.get(cached), cache.scores.get(uncached), return_exceptions=True
        )
    assert isinstance(hit, Score)
    assert hit.security_id == cached
    assert isinstance(miss, UnavailableError)


async def test_a_put_cancelled_after_its_commit_still_updates_the_cache(
    settings: Settings, make_securities: MakeSecurities, redis_admin: redis.Redis
) -> None:
    """A caller that gives up while the write-through is on its way does not leave the
    previous version cached: the cache write is shielded from the cancellation."""
    [sid] = make_securities(1, with_scores=True)

    async def slow_write_through(_: Sequence[CacheWrite]) -> None:
        await asyncio.sleep(0.3)

    async with SecureCache(
        settings, wrap_redis=delaying(before_write_through=slow_write_through)
    ) as cache:
        before = await cache.scores.get(sid)
        assert before is not None
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(cache.scores.put(sid, UPDATE), timeout=0.1)
        await asyncio.sleep(0.5)  # the shielded write-through finishes on its own
        key = KeyScheme(settings.key_prefix).value(Kind.SCORE, sid)
        raw = redis_admin.get(key)
        assert isinstance(raw, bytes)
        entry = decode(Score, raw)
        assert isinstance(entry, Score)
        assert entry.version == before.version + 1
        after = await cache.scores.get(sid)
        assert after == entry


async def test_batches_over_the_same_ids_in_opposite_orders_do_not_fail(
    settings: Settings, make_securities: MakeSecurities
) -> None:
    """Concurrent batch upserts naming the same ids in opposite orders all commit: rows are
    written in id order, so they cannot deadlock (which surfaced as 'unavailable')."""
    ids = make_securities(20, with_scores=True)
    forward = dict.fromkeys(ids, UPDATE)
    backward = dict.fromkeys(reversed(ids), ScoreUpdate(growth=5, value=5, quality=5, momentum=5))
    async with SecureCache(settings) as cache:
        for _ in range(10):
            results = await asyncio.gather(
                cache.scores.upsert_many(forward),
                cache.scores.upsert_many(backward),
                return_exceptions=True,
            )
            assert [r for r in results if isinstance(r, BaseException)] == []
        scores = await cache.scores.get_many(ids)
    # Each batch commits whole, after the other: every row saw the same sequence of writes.
    versions = {s.version for s in scores.values()}
    assert len(versions) == 1
    assert versions.pop() > 1


async def test_a_batch_write_returns_rows_in_the_callers_order(
    settings: Settings, make_securities: MakeSecurities
) -> None:
    """upsert_many writes in id order but answers in the order it was given."""
    ids = make_securities(5)
    wanted = list(reversed(ids))
    async with SecureCache(settings) as cache:
        writes = await cache.scores.upsert_many(dict.fromkeys(wanted, UPDATE))
    assert list(writes) == wanted
    assert all(w.created and w.score.version == 1 for w in writes.values())


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c, i: c.securities.list(after=123), id="cursor-not-text"),
        pytest.param(
            lambda c, i: c.scores.upsert_many({i: UPDATE}, if_versions=[1]), id="versions-list"
        ),
        pytest.param(
            lambda c, i: c.scores.upsert_many({i: UPDATE}, if_versions={"OTHER": 1}),
            id="versions-for-another-id",
        ),
    ],
)
async def test_malformed_library_arguments_are_validation_errors(
    settings: Settings,
    make_securities: MakeSecurities,
    call: Callable[[SecureCache, str], Awaitable[object]],
) -> None:
    """Arguments of the wrong shape raise ValidationError, never TypeError or a silent no-op."""
    [sid] = make_securities(1)
    async with SecureCache(settings) as cache:
        with pytest.raises(ValidationError):
            await call(cache, sid)


async def test_listener_catches_up_on_changes_made_while_it_was_away(
    settings: Settings,
    make_securities: MakeSecurities,
    admin_conn: Any,
    redis_admin: redis.Redis,
) -> None:
    """A change committed while the listener is disconnected (its notification is lost) is
    found on reconnect from updated_at, and the stale entry is floored."""
    [sid] = make_securities(1, with_scores=True)
    key = KeyScheme(settings.key_prefix).value(Kind.SCORE, sid)
    async with SecureCache(settings.with_changes(listen_changes=True)) as cache:
        listener = cache._listener
        assert listener is not None
        async with asyncio.timeout(10):
            await listener.connected.wait()
        cached = await cache.scores.get(sid)
        assert cached is not None
        await listener.stop()  # away: the NOTIFY below reaches nobody
        admin_conn.execute(
            "UPDATE securecache.score SET growth = 9.5 WHERE security_id = %s", (sid,)
        )
        assert entry_at(redis_admin, key) == cached  # still stale
        listener.connected.clear()
        listener.start()
        async with asyncio.timeout(10):
            await listener.connected.wait()  # set after the catch-up ran
        assert entry_at(redis_admin, key) is codec.FLOOR
        fresh = await cache.scores.get(sid)
    assert fresh is not None
    assert (fresh.version, fresh.growth) == (cached.version + 1, 9.5)
