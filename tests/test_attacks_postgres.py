"""Attacks from PostgreSQL's side (issue 8, findings 4, 5 and 7), each performed for real.

Any role that can connect can NOTIFY on the change channel, and every role may change its own
session defaults: these tests do both as the service roles would, and show that the cache
and the library's sessions are not moved by it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final

import orjson
import psycopg
import pytest
import redis
from psycopg import sql

from entries import decode
from fix_servers import Database, MakeSecurities, create_database, drop_database
from securecache import Score, ScoreUpdate, SecureCache, Settings, UnavailableError
from securecache.breaker import CircuitBreaker
from securecache.cache import RedisCache, connect
from securecache.keys import KeyScheme, Kind
from securecache.listener import NOTICE_BATCH, ChangeListener
from securecache.ops import migrations
from securecache.ops.cli import main
from securecache.ops.dev import ServerInfo
from securecache.ops.provision import derive_url
from securecache.store import CHANNEL
from securecache.telemetry import Telemetry

WAIT: Final = 10.0
FORGED_VERSION: Final = 9_000_000_000_000_000_000


def notice(id_: str, version: int, table: str = "score") -> str:
    return orjson.dumps({"table": table, "id": id_, "version": version, "op": "update"}).decode()


async def until(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {WAIT} s")
        await asyncio.sleep(0.01)


class CountingInvalidator:
    """The real Redis backend, counting the round trips the listener makes through it."""

    def __init__(self, inner: RedisCache) -> None:
        self.inner = inner
        self.calls: list[int] = []

    async def settle(self, targets: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[int]:
        self.calls.append(len(targets))
        return await self.inner.settle(targets, ttl_ms)

    async def announce(self, keys: Sequence[tuple[Kind, str]]) -> None:
        await self.inner.announce(keys)


@pytest.fixture
def redis_backend(servers: ServerInfo) -> RedisCache:
    """A Redis backend of the library's own kind (each test closes it)."""
    return RedisCache(
        connect(servers.redis_url, cluster=False, timeout=1.0, max_connections=8),
        Telemetry(),
        CircuitBreaker(5, 1.0),
    )


async def test_forged_notices_from_the_read_only_reader_move_nothing(
    database: Database,
    settings: Settings,
    make_securities: MakeSecurities,
    redis_admin: redis.Redis,
    redis_backend: RedisCache,
) -> None:
    """The reader, inside a read-only transaction, announces an impossible version for a cached
    score and changes for 399 ids that do not exist: the listener re-reads PostgreSQL, keeps
    the true entry, floors nothing and creates no key."""
    [sid] = make_securities(1, with_scores=True)
    keys = KeyScheme(settings.key_prefix)
    async with SecureCache(settings) as cache:
        cached = await cache.scores.get(sid)
    assert cached is not None
    counting = CountingInvalidator(redis_backend)
    listener = ChangeListener(database.writer_url, counting, keys, floor_ttl_ms=60_000)
    listener.start()
    try:
        async with asyncio.timeout(WAIT):
            await listener.connected.wait()
        ghosts = [f"GHOST-{i:04d}" for i in range(399)]
        with psycopg.connect(database.reader_url) as reader:
            assert reader.execute("SHOW transaction_read_only").fetchone() == ("on",)
            reader.execute(
                "SELECT pg_notify(%s, n) FROM unnest(%s::text[]) AS n",
                (CHANNEL, [notice(sid, FORGED_VERSION)] + [notice(g, 7) for g in ghosts]),
            )
            reader.commit()
        await until(lambda: listener.applied >= 400)
    finally:
        await listener.stop()
        await redis_backend.close()

    raw = redis_admin.get(keys.value(Kind.SCORE, sid))
    assert isinstance(raw, bytes)
    assert decode(Score, raw, sid) == cached  # not a floor at the forged version
    assert redis_admin.exists(*(keys.value(Kind.SCORE, g) for g in ghosts)) == 0
    assert len(counting.calls) <= 3, counting.calls  # one batch, not one round trip a notice


async def test_a_flood_of_notices_is_applied_in_batches_and_closing_stays_bounded(
    database: Database,
    settings: Settings,
    make_securities: MakeSecurities,
    redis_backend: RedisCache,
) -> None:
    """5,000 notices sent in one statement are applied a batch at a time; the listener (and
    the whole cache) then closes within its grace period instead of hanging."""
    ids = make_securities(50, with_scores=True)
    counting = CountingInvalidator(redis_backend)
    listener = ChangeListener(
        database.writer_url, counting, KeyScheme(settings.key_prefix), floor_ttl_ms=60_000
    )
    listener.start()
    try:
        async with asyncio.timeout(WAIT):
            await listener.connected.wait()
        payloads = [notice(ids[i % len(ids)], 1) for i in range(5000)]
        with psycopg.connect(database.writer_url, autocommit=True) as writer:
            writer.execute(
                "SELECT pg_notify(%s, n) FROM unnest(%s::text[]) AS n", (CHANNEL, payloads)
            )
        await until(lambda: sum(counting.calls) >= len(ids))
    finally:
        started = time.monotonic()
        await listener.stop()
        closed_in = time.monotonic() - started
        await redis_backend.close()
    assert closed_in < 6.0
    assert max(counting.calls) <= NOTICE_BATCH
    # Repeated ids in one batch are applied once: far fewer targets than notices.
    assert sum(counting.calls) < len(payloads) / 10, counting.calls

    async with SecureCache(settings.with_changes(listen_changes=True)):
        with psycopg.connect(database.writer_url, autocommit=True) as writer:
            writer.execute(
                "SELECT pg_notify(%s, n) FROM unnest(%s::text[]) AS n", (CHANNEL, payloads)
            )
        started = time.monotonic()
    assert time.monotonic() - started < 10.0  # SecureCache.aclose() after the flood


def test_service_roles_cannot_lift_their_connection_limit(database: Database) -> None:
    """A service role may not raise its own CONNECTION LIMIT: that one is enforcement."""
    for url in (database.writer_url, database.reader_url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")  # a default: lifted
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("ALTER ROLE CURRENT_USER CONNECTION LIMIT -1")
            limit = conn.execute(
                "SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            assert limit == (migrations.DEFAULT_CONNECTION_LIMIT,)


def test_service_roles_get_safe_session_defaults_in_the_database(database: Database) -> None:
    """Fresh sessions of both roles start with the migrated timeouts (defaults, not limits)."""
    for url in (database.writer_url, database.reader_url):
        with psycopg.connect(url) as conn:
            for name, value in migrations.SESSION_DEFAULTS.items():
                shown = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                assert shown == (value,), name


async def test_a_writer_that_lifts_its_own_timeouts_does_not_make_the_library_wait(
    database: Database,
    settings: Settings,
    make_securities: MakeSecurities,
) -> None:
    """The writer role sets its own statement and lock timeouts to 0 (which PostgreSQL lets any
    role do) and a row stays locked: the library's put still gives up within its own timeout
    with UnavailableError, and nothing is written."""
    [sid] = make_securities(1, with_scores=True)
    dbname = psycopg.conninfo.conninfo_to_dict(database.admin_url)["dbname"]
    with psycopg.connect(database.writer_url, autocommit=True) as writer:
        for name in ("statement_timeout", "lock_timeout"):
            writer.execute(
                sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET {} = 0").format(
                    sql.Identifier(str(dbname)), sql.Identifier(name)
                )
            )
    try:
        with psycopg.connect(database.admin_url) as locker:
            locker.execute(
                "SELECT 1 FROM securecache.score WHERE security_id = %s FOR UPDATE", (sid,)
            )
            fast = settings.with_changes(db_timeout_seconds=1.0)
            async with SecureCache(fast) as cache:
                started = time.monotonic()
                with pytest.raises(UnavailableError):
                    async with asyncio.timeout(8):  # a hang fails the test, not the run
                        await cache.scores.put(
                            sid, ScoreUpdate(growth=1.0, value=1.0, quality=1.0, momentum=1.0)
                        )
                waited = time.monotonic() - started
            locker.rollback()
        assert waited < 5.0
    finally:
        migrations.migrate(database.admin_url)  # the defaults back as they were
    with psycopg.connect(database.admin_url) as admin:
        version = admin.execute(
            "SELECT version FROM securecache.score WHERE security_id = %s", (sid,)
        ).fetchone()
    assert version == (1,)


def test_migrate_can_revoke_public_access_to_other_databases(
    database: Database, servers: ServerInfo
) -> None:
    """PUBLIC (and so every service role) can connect to other databases of the server until
    ``migrate --revoke-public DB`` takes that away."""
    other = create_database(servers)
    try:
        other_url = derive_url(database.writer_url, dbname=other)
        psycopg.connect(other_url).close()  # the default: any role may connect
        status = main(["migrate", "--database-url", database.admin_url, "--revoke-public", other])
        assert status == 0
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(other_url).close()
    finally:
        drop_database(servers, other)
