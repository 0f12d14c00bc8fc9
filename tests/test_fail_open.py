"""Redis is an optimisation, never a dependency: reads and writes survive it going away.

Two kinds of outage: a Redis that was never there (a closed loopback port), and a private
``redis-server`` of this test that is stopped or frozen and then comes back
(:class:`fix_cluster.RedisProcess`: the project's own server binary), so no test depends on
the machine's own Redis being restartable; the fixture kills it whatever happens.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from entries import holds
from fix_cluster import RedisProcess
from fix_servers import MakeSecurities
from securecache import Score, ScoreUpdate, SecureCache, Settings, sync
from securecache.keys import KeyScheme, Kind

START_TIMEOUT = 10.0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A running private redis-server, always killed afterwards."""
    server = RedisProcess(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.kill()


def update(growth: float) -> ScoreUpdate:
    return ScoreUpdate(growth=growth, value=5.0, quality=5.0, momentum=5.0)


def committed_version(conn: psycopg.Connection[Any], security_id: str) -> int | None:
    row = conn.execute(
        "SELECT version FROM securecache.score WHERE security_id = %s", (security_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def cached(server: RedisProcess, key: str) -> bytes | None:
    """What the private server holds at ``key`` (read with a client of its own)."""
    client = server.client()
    try:
        raw = client.get(key)
    finally:
        client.close()
    assert raw is None or isinstance(raw, bytes)
    return raw


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Wait until ``check`` is true (the breaker lets a probe through after a pause)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.05)


# -- Redis that is not there ---------------------------------------------------------------


async def test_no_redis_at_all_serves_from_postgresql(
    settings: Settings,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """With Redis on a closed port, gets come from PostgreSQL, puts commit, health is degraded."""
    nowhere = settings.with_changes(
        redis_url=f"redis://127.0.0.1:{closed_port()}/0", redis_timeout_seconds=0.2
    )
    ids = make_securities(3, with_scores=True)
    async with SecureCache(nowhere) as cache:
        started = time.monotonic()
        for _ in range(5):
            security = await cache.securities.get(ids[0])
            assert security is not None
            assert security.id == ids[0]
        assert set(await cache.securities.get_many(ids)) == set(ids)
        before = await cache.scores.get(ids[1])
        assert before is not None
        assert before.version == 1
        assert time.monotonic() - started < 10, "reads did not fail fast"

        after = await cache.scores.put(ids[1], update(9.5))
        assert after.version == 2
        assert committed_version(admin_conn, ids[1]) == 2
        assert await cache.scores.get(ids[1]) == after

        health = await cache.health()
        assert health.database is True
        assert health.redis == "degraded"
        assert health.ready


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
def test_the_sync_twin_with_no_redis_at_all_serves_from_postgresql(
    settings: Settings, make_securities: MakeSecurities, cluster: bool
) -> None:
    """The sync twin opens even when no Redis answers (a cluster client would connect while
    it is built), serves reads from PostgreSQL on its callers' threads and reports Redis as
    degraded."""
    nowhere = settings.with_changes(
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
        redis_cluster=cluster,
        redis_timeout_seconds=0.2,
    )
    ids = make_securities(2, with_scores=True)
    with sync.SecureCache(nowhere) as cache:
        for _ in range(3):
            security = cache.securities.get(ids[0])
            assert security is not None
            assert security.id == ids[0]
        assert set(cache.scores.get_many(ids)) == set(ids)
        assert cache.health().redis == "degraded"


# -- Redis that goes away and comes back ---------------------------------------------------


def outage_settings(settings: Settings, server: RedisProcess) -> Settings:
    """Short timeouts, a breaker that opens at the first failure and probes again soon."""
    return settings.with_changes(
        redis_url=server.url,
        redis_cluster=False,  # a single server of the test's own, to stop and restart
        # Short, but not so short that a busy machine's first connection counts as an outage.
        redis_timeout_seconds=0.5,
        breaker_failures=1,
        breaker_reset_seconds=0.5,
    )


async def test_redis_restarted_empty(
    settings: Settings,
    private_redis: RedisProcess,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Puts commit while Redis is down; once it is back (empty) it is used and filled again."""
    (id_,) = make_securities(1)
    key = KeyScheme(settings.key_prefix).value(Kind.SCORE, id_)
    async with SecureCache(outage_settings(settings, private_redis)) as cache:
        first = await cache.scores.put(id_, update(1))
        assert holds(cached(private_redis, key), first)

        private_redis.stop()
        second = await cache.scores.put(id_, update(2))
        assert second.version == 2
        assert committed_version(admin_conn, id_) == 2
        assert await cache.scores.get(id_) == second
        assert (await cache.health()).redis == "degraded"

        private_redis.start()

        async def recovered() -> bool:
            return (await cache.health()).redis == "ok"

        await eventually(recovered)
        assert await cache.scores.get(id_) == second
        assert holds(cached(private_redis, key), second)


async def _stale_entry_after_a_freeze(
    cache: SecureCache, server: RedisProcess, id_: str, key: str
) -> tuple[Score, Score]:
    """Warm v1, freeze Redis, write v2 while frozen, thaw: Redis still holds v1."""
    first = await cache.scores.put(id_, update(1))
    assert holds(cached(server, key), first)
    server.pause()
    try:
        # A read while frozen times out, opens the breaker and falls through to PostgreSQL.
        assert await cache.scores.get(id_) == first
        second = await cache.scores.put(id_, update(2))
        assert second.version == 2
        assert (await cache.health()).redis == "degraded"
    finally:
        server.resume()
    # The outage left the old value in Redis: exactly what must not be served any more.
    assert holds(cached(server, key), first)
    return first, second


async def test_stale_entry_is_invalidated_once_redis_answers(
    settings: Settings,
    private_redis: RedisProcess,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """A write-through lost to an outage is replayed as a DEL once Redis answers again."""
    (id_,) = make_securities(1)
    key = KeyScheme(settings.key_prefix).value(Kind.SCORE, id_)
    async with SecureCache(outage_settings(settings, private_redis)) as cache:
        _, second = await _stale_entry_after_a_freeze(cache, private_redis, id_, key)
        assert committed_version(admin_conn, id_) == 2

        async def recovered() -> bool:
            return (await cache.health()).redis == "ok"

        await eventually(recovered)
        assert cached(private_redis, key) is None, "the stale entry survived the recovery"
        assert await cache.scores.get(id_) == second
        assert holds(cached(private_redis, key), second)


async def test_first_get_after_an_outage_is_not_stale(
    settings: Settings,
    private_redis: RedisProcess,
    make_securities: MakeSecurities,
) -> None:
    """The very first get once Redis answers returns the version written during the outage."""
    (id_,) = make_securities(1)
    key = KeyScheme(settings.key_prefix).value(Kind.SCORE, id_)
    reset = 0.5
    async with SecureCache(outage_settings(settings, private_redis)) as cache:
        _, second = await _stale_entry_after_a_freeze(cache, private_redis, id_, key)
        await asyncio.sleep(reset + 0.2)  # the breaker now lets the next call through
        got = await cache.scores.get(id_)
        assert got == second, f"served version {got.version if got else None} after the outage"
        entry = cached(private_redis, key)
        assert entry is None or holds(entry, second)
