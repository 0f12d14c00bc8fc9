"""The contract of the Redis side of the policy (:class:`securecache.readthrough.CacheBackend`),
against real Redis: what each round trip promises, whoever implements it. The suite runs on
the library's RedisCache and on the test double that wraps it (tests/interposed.py), so a
double that breaks the contract fails here before it can mislead a race test."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import redis

from faultproxy import FaultProxy, Mode
from fix_cluster import RedisTarget
from interposed import Interposed
from securecache.breaker import CircuitBreaker
from securecache.cache import (
    LEASE_HELD,
    LEASE_TAKEN,
    NO_LEASE_NEEDED,
    REFUSED_LEASE,
    STORED,
    CacheWrite,
    RedisCache,
    SyncReader,
    connect,
    connect_sync,
)
from securecache.keys import KeyScheme, Kind
from securecache.ops.dev import ServerInfo
from securecache.readthrough import CacheBackend
from securecache.telemetry import Telemetry

TTL = 60_000
WRAPPERS: dict[str, Callable[[RedisCache], CacheBackend]] = {
    "RedisCache": lambda cache: cache,
    "Interposed": Interposed,
}


@pytest.fixture(params=sorted(WRAPPERS))
async def backend(
    request: pytest.FixtureRequest, redis_target: RedisTarget, key_prefix: str
) -> AsyncIterator[CacheBackend]:
    """A backend on the session's Redis (or cluster), announcing on the prefix's channel."""
    cache = RedisCache(
        connect(redis_target.url, cluster=redis_target.cluster, timeout=1.0, max_connections=4),
        Telemetry(),
        CircuitBreaker(5, 1.0),
        channel=KeyScheme(key_prefix).channel,
    )
    try:
        yield WRAPPERS[request.param](cache)
    finally:
        await cache.close()


@pytest.fixture
def keys(key_prefix: str) -> tuple[str, str]:
    """The value and lease keys of one fresh id."""
    scheme, id_ = KeyScheme(key_prefix), "C" + secrets.token_hex(4)
    return scheme.value(Kind.SCORE, id_), scheme.lease(Kind.SCORE, id_)


def entry(version: int) -> bytes:
    return b"%d|%s" % (version, orjson.dumps({"v": version}))


def write(keys: tuple[str, str], version: int, **kw: Any) -> CacheWrite:
    return CacheWrite(key=keys[0], lease_key=keys[1], version=version, entry=entry(version),
                      ttl_ms=TTL, **kw)  # fmt: skip


async def test_a_miss_takes_the_lease_and_a_second_reader_finds_it_held(
    backend: CacheBackend, keys: tuple[str, str]
) -> None:
    """The lookup of an empty key returns nothing and the lease; another token is told the
    lease is held."""
    assert await backend.lookup([keys], "t1", TTL) == [(None, LEASE_TAKEN)]
    assert await backend.lookup([keys], "t2", TTL) == [(None, LEASE_HELD)]


async def test_a_fill_under_its_lease_is_stored_and_then_served(
    backend: CacheBackend, keys: tuple[str, str], redis_admin: redis.Redis
) -> None:
    """CAS under the lease stores the entry with a TTL and frees the lease; the lookup then
    serves it and takes no lease."""
    await backend.lookup([keys], "t1", TTL)
    assert await backend.compare_and_set([write(keys, 3)], "t1") == [STORED]
    assert redis_admin.pttl(keys[0]) > 0
    assert redis_admin.exists(keys[1]) == 0
    assert await backend.lookup([keys], "t2", TTL) == [(entry(3), NO_LEASE_NEEDED)]


async def test_a_fill_without_the_lease_is_refused(
    backend: CacheBackend, keys: tuple[str, str], redis_admin: redis.Redis
) -> None:
    """A token that does not hold the lease stores nothing; a write-through that lost its
    lease drops the entry instead."""
    await backend.lookup([keys], "t1", TTL)
    assert await backend.compare_and_set([write(keys, 3)], "other") == [REFUSED_LEASE]
    redis_admin.set(keys[0], entry(2), px=TTL)
    refused = await backend.compare_and_set([write(keys, 3)], "other", write_through=True)
    assert refused == [REFUSED_LEASE]
    assert redis_admin.exists(keys[0]) == 0


async def test_a_newer_entry_refuses_an_older_fill_and_names_its_version(
    backend: CacheBackend, keys: tuple[str, str], redis_admin: redis.Redis
) -> None:
    """An entry claiming version 7 refuses a fill of version 3 and says 7 (for the caller to
    check against PostgreSQL)."""
    redis_admin.set(keys[0], entry(7), px=TTL)
    assert await backend.take_leases([keys[1]], "t1", TTL, take_over=True) == [True]
    assert await backend.compare_and_set([write(keys, 3)], "t1") == [7]


async def test_an_entry_without_a_ttl_is_neither_served_nor_respected(
    backend: CacheBackend, keys: tuple[str, str], redis_admin: redis.Redis
) -> None:
    """No TTL: not ours. The lookup treats the key as empty and the fill replaces it, whatever
    version it claims."""
    redis_admin.set(keys[0], entry(9_000))
    assert await backend.lookup([keys], "t1", TTL) == [(None, LEASE_TAKEN)]
    assert await backend.compare_and_set([write(keys, 3)], "t1") == [STORED]
    assert redis_admin.get(keys[0]) == entry(3)


@pytest.mark.parametrize(
    ("cached", "truth", "left"),
    [(5, 5, entry(5)), (4, 5, b"5|~"), (9, 5, b"5|~"), (5, 0, None), (None, 5, b"5|~")],
    ids=["same", "older", "newer", "row gone", "nothing cached"],
)
async def test_settle_leaves_exactly_the_version_postgresql_holds(
    backend: CacheBackend,
    keys: tuple[str, str],
    redis_admin: redis.Redis,
    cached: int | None,
    truth: int,
    left: bytes | None,
) -> None:
    """An entry at PostgreSQL's version stays; any other becomes that version's floor; a row
    that is gone takes its entry (and lease) with it."""
    if cached is not None:
        redis_admin.set(keys[0], entry(cached), px=TTL)
    await backend.settle([(keys[0], keys[1], truth)], TTL)
    assert redis_admin.get(keys[0]) == left


async def test_writers_take_leases_over_and_give_them_back(
    backend: CacheBackend, keys: tuple[str, str], redis_admin: redis.Redis
) -> None:
    """A reader's SET NX fails on a held lease; a writer takes it over; release frees it."""
    assert await backend.take_leases([keys[1]], "reader", TTL) == [True]
    assert await backend.take_leases([keys[1]], "reader2", TTL) == [False]
    assert await backend.take_leases([keys[1]], "writer", TTL, take_over=True) == [True]
    assert redis_admin.get(keys[1]) == b"writer"
    await backend.release_leases([keys[1]])
    assert redis_admin.exists(keys[1]) == 0


async def test_delete_and_announce(
    backend: CacheBackend, keys: tuple[str, str], redis_admin: redis.Redis, key_prefix: str
) -> None:
    """delete removes values and leases; announce publishes the ids on the prefix's channel."""
    redis_admin.set(keys[0], entry(1), px=TTL)
    redis_admin.set(keys[1], b"t", px=TTL)
    assert await backend.delete(list(keys))
    assert redis_admin.exists(*keys) == 0
    subscribe: Any = redis_admin.pubsub  # untyped in redis-py
    pubsub = subscribe()
    pubsub.subscribe(KeyScheme(key_prefix).channel)
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        await backend.announce([(Kind.SCORE, "A1"), (Kind.SECURITY, "B2")])
        message = pubsub.get_message(timeout=5)
        assert message is not None
        assert message["data"] == b"score A1\nsecurity B2"
    finally:
        pubsub.close()


def named(url: str, name: str) -> str:
    """``url`` with a client name, so that the test can find its own connections."""
    return f"{url}{'&' if '?' in url else '?'}client_name={name}"


def own_connection_ids(admin: redis.Redis, name: str) -> list[str]:
    return [str(c["id"]) for c in admin.client_list() if c.get("name") == name]


@pytest.mark.parametrize("max_connections", [1, 16], ids=["none-kept", "kept"])
async def test_a_read_on_a_connection_redis_dropped_is_sent_again_on_a_fresh_one(
    servers: ServerInfo, keys: tuple[str, str], max_connections: int
) -> None:
    """The hit path's MGET (sent on a pooled connection directly, or on one it keeps between
    reads) heals connections that Redis closed (a restart, a CLIENT KILL, an idle timeout)
    the way the client's retry policy would: one more try on a fresh connection, no failure
    counted, no fall-through. With connections kept, two are kept here (two MGETs were in
    flight at once) and both are killed: the retry does not take the other dead one.

    On the session's single Redis in every mode: on a cluster the MGETs go through redis-py's
    cluster client, not this path."""
    name = "sc-test-" + secrets.token_hex(4)
    redis_admin = redis.Redis.from_url(servers.redis_url)
    redis_admin.set(keys[0], entry(4), px=TTL)
    client = connect(
        named(servers.redis_url, name), cluster=False, timeout=1.0, max_connections=max_connections
    )
    breaker = CircuitBreaker(1, 60.0)  # one failure would open it
    cache = RedisCache(client, Telemetry(), breaker)
    try:
        together = 1 if max_connections == 1 else 2
        reads = await asyncio.gather(*(cache.entries([keys[0]]) for _ in range(together)))
        assert reads == [[entry(4)]] * together
        killed = own_connection_ids(redis_admin, name)
        assert len(killed) == together
        for connection_id in killed:
            assert redis_admin.client_kill_filter(_id=connection_id) == 1
        assert await cache.entries([keys[0]]) == [entry(4)]
        assert not breaker.is_open
        assert own_connection_ids(redis_admin, name) not in ([], killed)
    finally:
        await cache.close()
        redis_admin.delete(keys[0])
        redis_admin.close()


async def test_the_sync_hit_path_sends_its_mget_again_on_a_fresh_connection(
    servers: ServerInfo, keys: tuple[str, str]
) -> None:
    """The sync twin's MGET (sent on a pooled connection directly, on the caller's thread)
    survives a connection that Redis closed: no failure reported, no fall-through to the loop
    (here the pool's checkout finds the closed socket and connects afresh; a connection that
    dies during the command is tried once more, as the loop's is)."""
    name = "sc-test-" + secrets.token_hex(4)
    redis_admin = redis.Redis.from_url(servers.redis_url)
    redis_admin.set(keys[0], entry(4), px=TTL)
    client = connect_sync(named(servers.redis_url, name), cluster=False, timeout=1.0,
                          max_connections=1)  # fmt: skip
    cache = RedisCache(
        connect(servers.redis_url, cluster=False, timeout=1.0, max_connections=1),
        Telemetry(),
        CircuitBreaker(1, 60.0),
    )
    failures: list[None] = []
    reader = SyncReader(client, cache, Telemetry(), lambda: failures.append(None))
    try:
        assert reader.entries([keys[0]]) == [entry(4)]
        killed = own_connection_ids(redis_admin, name)
        assert len(killed) == 1
        assert redis_admin.client_kill_filter(_id=killed[0]) == 1
        assert reader.entries([keys[0]]) == [entry(4)]
        assert failures == []
        assert own_connection_ids(redis_admin, name) not in ([], killed)
    finally:
        reader.close()
        await cache.close()
        redis_admin.delete(keys[0])
        redis_admin.close()


async def test_a_read_cut_short_never_leaves_its_reply_for_the_next_read(
    servers: ServerInfo, key_prefix: str
) -> None:
    """An MGET abandoned before its reply (here: past the deadline, its reply held by a proxy
    in front of Redis and delivered afterwards) leaves that reply on its connection. That
    connection is never used as it is for the next read, which would otherwise take the old
    reply for its own keys' entries: redis-py disconnects a connection whose read was
    interrupted, and the kept connections (``ReadConnections``) take back only one whose
    exchange completed."""
    scheme = KeyScheme(key_prefix)
    first, second = (scheme.value(Kind.SCORE, "C" + secrets.token_hex(4)) for _ in range(2))
    redis_admin = redis.Redis.from_url(servers.redis_url)
    redis_admin.set(first, entry(1), px=TTL)
    redis_admin.set(second, entry(2), px=TTL)
    url = urlsplit(servers.redis_url)
    proxy = FaultProxy(url.hostname or "127.0.0.1", url.port or 6379)
    await proxy.start()
    credentials = url.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    client = connect(
        urlunsplit(url._replace(netloc=netloc)), cluster=False, timeout=1.0, max_connections=16
    )
    cache = RedisCache(client, Telemetry(), CircuitBreaker(100, 60.0), deadline=0.2)
    try:
        assert await cache.entries([first]) == [entry(1)]  # its connection is kept
        proxy.set(Mode.HANG)
        assert await cache.entries([first]) is None  # past the deadline: fails open
        proxy.set(Mode.PASS)  # the held MGET goes on; its reply comes back
        await asyncio.sleep(0.2)
        assert await cache.entries([second]) == [entry(2)]
        assert await cache.entries([first, second]) == [entry(1), entry(2)]
    finally:
        await cache.close()
        await proxy.stop()
        redis_admin.delete(first, second)
        redis_admin.close()
