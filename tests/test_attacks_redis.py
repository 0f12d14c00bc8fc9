"""Cache poisoning (issue 8, finding 1), performed for real by a Redis user of the prefix.

Every service's Redis user may write keys under the prefix (they fill the cache), so any of
them, the public API's included, can plant a well-formed entry. PostgreSQL is the truth: an
entry is served only until its own expiry, which may lie no further than the longest life the
library gives an entry (whatever TTL, if any, the key has in Redis); a record stored under
another id's key is never served; and an entry claiming a version PostgreSQL does not hold
is dropped by the next write, fill or change notice that meets it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
import redis

from entries import decode, forged, holds, plant
from fix_servers import MakeSecurities
from securecache import Score, ScoreUpdate, SecureCache, Security, Settings, codec
from securecache.keys import KeyScheme, Kind
from securecache.ops.acl import setuser_rules

FORGED: Final = 9_000_000_000_000_000_000
WAIT: Final = 10.0


@pytest.fixture
def attacker(redis_admin: redis.Redis, settings: Settings) -> Iterator[redis.Redis]:
    """A Redis client logged in as a service user of this prefix (what any API holds). On a
    cluster, the administrator's client: a stronger attacker, writing the same keys."""
    if settings.redis_cluster:
        yield redis_admin
        return
    user, password = f"attacker-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    execute: Any = redis_admin.execute_command  # untyped in redis-py
    execute("ACL", "SETUSER", user, *setuser_rules(password, settings.key_prefix))
    assert settings.redis_url is not None
    parts = urlsplit(settings.redis_url)
    location = parts.netloc.rpartition("@")[2]
    url = urlunsplit(parts._replace(netloc=f"{quote(user)}:{quote(password)}@{location}"))
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        client.close()
        redis_admin.acl_deluser(user)


def forged_score(truth: Score, version: int, *, ttl_seconds: float = 300.0) -> bytes:
    record = {**codec.to_dict(truth), "version": version, "growth": 0.125}
    return forged(version, record, ttl_seconds)


async def until(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "still false"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("redis_ttl_ms", [None, 10 * 365 * 86_400_000], ids=["no-ttl", "ten-years"])
async def test_an_entry_living_beyond_the_longest_entry_life_is_never_served(
    settings: Settings,
    make_securities: MakeSecurities,
    attacker: redis.Redis,
    redis_ttl_ms: int | None,
) -> None:
    """A well-formed entry claiming an impossible version, whose own expiry lies beyond the
    longest life the library gives an entry (with no Redis TTL, or one of ten years), is a
    miss: the read returns PostgreSQL's record and the fill replaces the plant."""
    [sid] = make_securities(1, with_scores=True)
    key = KeyScheme(settings.key_prefix).value(Kind.SCORE, sid)
    longest = settings.ttl_seconds * (1 + settings.ttl_jitter)
    async with SecureCache(settings) as cache:
        truth = await cache.scores.get(sid)
        assert truth is not None
        await cache.invalidate(sid)
        plant_bytes = forged_score(truth, FORGED, ttl_seconds=longest + 3600)
        attacker.set(key, plant_bytes, px=redis_ttl_ms)
        assert await cache.scores.get(sid) == truth
        assert await cache.scores.get(sid) == truth
    assert holds(attacker.get(key), truth)
    assert 0 < attacker.pttl(key) <= longest * 1000


async def test_an_entry_without_a_ttl_is_served_no_longer_than_its_own_expiry(
    settings: Settings, make_securities: MakeSecurities, attacker: redis.Redis
) -> None:
    """A plant with no Redis TTL and a plausible expiry of its own is served only until
    that expiry; then it is a miss and the fill replaces it."""
    [sid] = make_securities(1, with_scores=True)
    key = KeyScheme(settings.key_prefix).value(Kind.SCORE, sid)
    async with SecureCache(settings) as cache:
        truth = await cache.scores.get(sid)
        assert truth is not None
        attacker.set(key, forged_score(truth, truth.version, ttl_seconds=0.3))  # no TTL
        served = await cache.scores.get(sid)
        assert served is not None
        assert served.growth == 0.125  # the window the plant's own expiry allows
        await asyncio.sleep(0.4)
        assert await cache.scores.get(sid) == truth
    assert holds(attacker.get(key), truth)
    assert attacker.pttl(key) > 0


async def test_a_forged_newer_entry_does_not_outlive_the_next_write(
    settings: Settings, make_securities: MakeSecurities, attacker: redis.Redis
) -> None:
    """A plant with a TTL and version 9e18 may be served until a write meets it: the PUT's
    write-through is refused by the plant's claim, the claim is checked against PostgreSQL,
    and the plant is dropped; the next read is the committed version."""
    [sid] = make_securities(1, with_scores=True)
    key = KeyScheme(settings.key_prefix).value(Kind.SCORE, sid)
    async with SecureCache(settings) as cache:
        truth = await cache.scores.get(sid)
        assert truth is not None
        plant_bytes = forged_score(truth, FORGED)
        attacker.set(key, plant_bytes, px=600_000)
        assert (await cache.scores.get(sid) or truth).version == FORGED  # served: a hit
        written = await cache.scores.put(
            sid, ScoreUpdate(growth=3.0, value=3.0, quality=3.0, momentum=3.0)
        )
        assert written.version == truth.version + 1
        assert attacker.get(key) != plant_bytes
        assert await cache.scores.get(sid) == written


async def test_a_forged_floor_or_entry_is_dropped_by_the_fill_it_blocks(
    settings: Settings, make_securities: MakeSecurities, attacker: redis.Redis
) -> None:
    """A planted floor at 9e18 would refuse every fill of the id for as long as it lives: the
    refused fill checks the claim, drops the floor, and the next read caches the truth."""
    [sid] = make_securities(1, with_scores=True)
    key = KeyScheme(settings.key_prefix).value(Kind.SCORE, sid)
    attacker.set(key, b"%d|~" % FORGED, px=600_000)
    async with SecureCache(settings) as cache:
        first = await cache.scores.get(sid)
        assert first is not None
        assert attacker.get(key) is None  # the floor is gone
        assert await cache.scores.get(sid) == first
    assert holds(attacker.get(key), first)


async def test_another_ids_record_under_a_key_is_never_served(
    settings: Settings, make_securities: MakeSecurities, attacker: redis.Redis
) -> None:
    """A valid record of security B copied under A's key (with a TTL) is corrupt for A: the
    read returns A from PostgreSQL and the fill replaces the copy."""
    a, b = make_securities(2)
    keys = KeyScheme(settings.key_prefix)
    async with SecureCache(settings) as cache:
        real_b = await cache.securities.get(b)
        assert real_b is not None
        attacker.set(keys.value(Kind.SECURITY, a), plant(real_b), px=600_000)
        got = await cache.securities.get(a)
        assert isinstance(got, Security)
        assert got.id == a
    entry = attacker.get(keys.value(Kind.SECURITY, a))
    assert isinstance(entry, bytes)
    assert decode(Security, entry, a) == got


async def test_a_forged_absent_marker_is_replaced_by_the_next_change_notice(
    settings: Settings,
    make_securities: MakeSecurities,
    attacker: redis.Redis,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """A planted "absent" makes an existing security 404 while it lives; the next change of the
    row (announced by PostgreSQL, re-read by the listener) replaces it."""
    [sid] = make_securities(1)
    key = KeyScheme(settings.key_prefix).value(Kind.SECURITY, sid)
    async with SecureCache(settings.with_changes(listen_changes=True)) as cache:
        listener = cache._listener
        assert listener is not None
        async with asyncio.timeout(WAIT):
            await listener.connected.wait()
        marker = plant(None, 300)
        attacker.set(key, marker, px=300_000)
        assert await cache.securities.get(sid) is None  # the window: until the row changes
        admin_conn.execute("UPDATE securecache.security SET name = 'Renamed' WHERE id = %s", (sid,))
        await until(lambda: attacker.get(key) != marker)
        fresh = await cache.securities.get(sid)
        assert fresh is not None
        assert fresh.name == "Renamed"


async def test_a_planted_lease_without_a_ttl_does_not_block_fills(
    settings: Settings, make_securities: MakeSecurities, attacker: redis.Redis
) -> None:
    """A lease key planted with no TTL would make every miss of the id wait and then skip
    the fill, for ever: the lookup takes such a lease over, and the fill lands."""
    [sid] = make_securities(1, with_scores=True)
    keys = KeyScheme(settings.key_prefix)
    attacker.set(keys.lease(Kind.SCORE, sid), b"not-yours")  # no TTL
    async with SecureCache(settings) as cache:
        started = time.monotonic()
        score = await cache.scores.get(sid)
        waited = time.monotonic() - started
    assert score is not None
    assert holds(attacker.get(keys.value(Kind.SCORE, sid)), score)
    assert waited < settings.lease_wait_ms / 1000  # no wait for a fill that would never come
