"""The consistency audit: at rate 1 it finds a planted entry, counts it by kind, logs it and
heals it; at rate 0 it adds nothing to a hit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from counters import counter_totals
from entries import forged
from fix_servers import MakeSecurities
from securecache import Score, SecureCache, Settings, codec
from securecache.keys import KeyScheme, Kind

WAIT = 10.0


@pytest.fixture
def metrics() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    """A meter provider whose counters can be read back."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def counted(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    """A counter's totals by ``securecache.audit.kind`` ("" without one)."""
    return counter_totals(reader, name, by="securecache.audit.kind")


def plant(redis_admin: redis.Redis, prefix: str, score: Score, version: int, growth: float) -> str:
    """Write a well-formed score entry of our own making, with a TTL, as a Redis user could."""
    record = {**codec.to_dict(score), "version": version, "growth": growth}
    key = KeyScheme(prefix).value(Kind.SCORE, score.security_id)
    redis_admin.set(key, forged(version, record, ttl_seconds=60), px=60_000)
    return key


async def eventually(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "still false"
        await asyncio.sleep(0.01)


@pytest.fixture
def scored(make_securities: MakeSecurities, admin_conn: psycopg.Connection[Any]) -> str:
    """A security whose score is at version 2 (so an older version exists to plant)."""
    [sid] = make_securities(1, with_scores=True)
    admin_conn.execute("UPDATE securecache.score SET growth = 9.5 WHERE security_id = %s", (sid,))
    return sid


PLANTS: dict[str, Callable[[int], int]] = {
    "stale": lambda v: v - 1,
    "newer_than_database": lambda _: 9_000_000_000,
    "altered": lambda v: v,  # the row's very version, other content
}


@pytest.mark.parametrize("kind", sorted(PLANTS))
async def test_the_audit_finds_counts_and_heals_a_planted_entry(
    kind: str,
    settings: Settings,
    scored: str,
    redis_admin: redis.Redis,
    metrics: tuple[MeterProvider, InMemoryMetricReader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An entry planted in Redis (older than the row, claiming a version it never had, or at
    the row's version with other content) is served once, then found by the audit, counted
    as its kind, logged with both versions, and dropped: the next read is PostgreSQL's."""
    provider, reader = metrics
    sid = scored
    audited = settings.with_changes(audit_sample_rate=1.0, audit_grace_seconds=0.05)
    async with SecureCache(audited, meter_provider=provider) as cache:
        truth = await cache.scores.get(sid)
        assert truth is not None
        await asyncio.sleep(0.1)  # the row has kept its version past the grace period
        key = plant(redis_admin, audited.key_prefix, truth, PLANTS[kind](truth.version), 0.125)
        served = await cache.scores.get(sid)
        assert served is not None
        assert served.growth == 0.125  # the plant was served: the audit is what catches it
        await eventually(lambda: redis_admin.exists(key) == 0)
        assert await cache.scores.get(sid) == truth
    assert counted(reader, "securecache.audit.inconsistent") == {kind: 1}
    assert counted(reader, "securecache.audit.checked") == {"": 1}  # the one hit: the plant
    assert f"{sid} is {kind} in the cache" in caplog.text


async def test_an_entry_trailing_a_fresh_write_is_not_counted(
    settings: Settings,
    scored: str,
    redis_admin: redis.Redis,
    metrics: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    """Within the grace period an older entry is a write-through on its way, not an error."""
    provider, reader = metrics
    sid = scored
    audited = settings.with_changes(audit_sample_rate=1.0, audit_grace_seconds=30.0)
    async with SecureCache(audited, meter_provider=provider) as cache:
        truth = await cache.scores.get(sid)
        assert truth is not None
        plant(redis_admin, audited.key_prefix, truth, truth.version - 1, 0.5)
        assert await cache.scores.get(sid) is not None
        await eventually(lambda: counted(reader, "securecache.audit.checked") == {"": 1})
    assert counted(reader, "securecache.audit.inconsistent") == {}


async def test_at_rate_zero_a_hit_runs_nothing_extra(
    settings: Settings,
    make_securities: MakeSecurities,
    metrics: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    """With the audit off, hits make no PostgreSQL query and check nothing."""
    provider, reader = metrics
    ids = make_securities(20, with_scores=True)
    async with SecureCache(settings, meter_provider=provider) as cache:
        assert len(await cache.scores.get_many(ids)) == 20
        queries = sum(counted(reader, "securecache.db.queries").values())
        for _ in range(5):
            assert len(await cache.scores.get_many(ids)) == 20
        await asyncio.sleep(0.05)
        assert sum(counted(reader, "securecache.db.queries").values()) == queries
    assert counted(reader, "securecache.audit.checked") == {}
