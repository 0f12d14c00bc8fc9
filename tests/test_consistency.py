"""Races between fills, writes, invalidations and operators, against real PostgreSQL and Redis.

Each race is staged, not hoped for: a read-through fill is held between its PostgreSQL read
and its Redis write (by wrapping the ``fetch`` of its ReadThrough), the other party acts, and
the fill is released. Afterwards Redis must hold the database's version or nothing. The load
tests add random delays and let the scheduler find the interleavings instead, then check the
same property over every key. The last section shows the windows the design only bounds.
docs/consistency.md maps each test to the race it covers.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import psycopg
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from entries import decode
from interposed import HeldFills, delaying
from securecache import ConflictError, Score, ScoreUpdate, SecureCache, Settings, codec, sync
from securecache.cache import CacheWrite, RedisCache, connect
from securecache.keys import KeyScheme, Kind
from securecache.readthrough import CacheBackend

MakeSecurities = Callable[..., list[str]]
Values = tuple[float, float, float, float]

WAIT = 10.0
"""Longest wait for a staged step; a test that needs longer has found a hang."""


# -- helpers -------------------------------------------------------------------------------


def values_of(score: Score) -> Values:
    return (score.growth, score.value, score.quality, score.momentum)


def update(
    growth: float, value: float = 4.25, quality: float = 6.5, momentum: float = 3.75
) -> ScoreUpdate:
    return ScoreUpdate(growth=growth, value=value, quality=quality, momentum=momentum)


def as_bytes(raw: object) -> bytes | None:
    assert raw is None or isinstance(raw, bytes), raw
    return raw


@attrs.frozen
class Stage:
    """The servers as a test sees them: library settings, and admin access to both stores."""

    settings: Settings
    make_securities: MakeSecurities
    redis: redis.Redis
    db: psycopg.Connection[Any]
    prefix: str

    def scores(self, ids: Sequence[str]) -> dict[str, tuple[int, Values]]:
        """The committed score rows of ``ids``: version and values, straight from PostgreSQL."""
        rows = self.db.execute(
            "SELECT security_id, version, growth, value, quality, momentum"
            " FROM securecache.score WHERE security_id = ANY(%s)",
            (list(ids),),
        ).fetchall()
        return {row[0]: (row[1], (row[2], row[3], row[4], row[5])) for row in rows}

    def bump(self, security_id: str) -> int:
        """Change a score behind the library's back (as an operator would); the new version."""
        row = self.db.execute(
            "UPDATE securecache.score"
            " SET growth = CASE WHEN growth >= 5 THEN growth - 1.5 ELSE growth + 1.5 END"
            " WHERE security_id = %s RETURNING version",
            (security_id,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def key(self, security_id: str) -> str:
        return KeyScheme(self.prefix).value(Kind.SCORE, security_id)

    def cached(self, security_id: str) -> Score | codec.Marker | None:
        """What Redis holds for the score of ``security_id``, decoded as the library would."""
        return decode(Score, as_bytes(self.redis.get(self.key(security_id))))

    def divergent(self, ids: Sequence[str]) -> list[str]:
        """Every id whose Redis score entry disagrees with PostgreSQL (empty = consistent)."""
        raws = self.redis.mget([self.key(i) for i in ids])
        truth = self.scores(ids)
        problems = []
        for id_, raw in zip(ids, raws, strict=True):
            entry = decode(Score, as_bytes(raw))
            row = truth.get(id_)
            if entry is None or entry is codec.FLOOR:
                continue  # nothing cached (a floor only refuses older writes)
            if entry is codec.ABSENT:
                if row is not None:
                    problems.append(f"{id_}: cached absent, database has version {row[0]}")
            elif not isinstance(entry, Score):
                problems.append(f"{id_}: corrupt entry {raw!r:.80}")
            elif row is None:
                problems.append(f"{id_}: cached version {entry.version}, database has no row")
            elif (entry.version, values_of(entry)) != row:
                problems.append(f"{id_}: cached {entry.version} {values_of(entry)}, database {row}")
        return problems


@pytest.fixture(params=["redis", "near-cache"])
def stage(
    request: pytest.FixtureRequest,
    settings: Settings,
    make_securities: MakeSecurities,
    redis_admin: redis.Redis,
    admin_conn: psycopg.Connection[Any],
    key_prefix: str,
) -> Stage:
    """Every race of this module is run twice: on Redis alone, and with a near cache in
    front of it (speed never buys a stale read)."""
    if request.param == "near-cache":
        settings = settings.with_changes(local_cache_size=10_000)
    return Stage(settings, make_securities, redis_admin, admin_conn, key_prefix)


def jitter(rng: random.Random, *, fills: float, writes: float) -> Callable[[CacheBackend], Any]:
    """Random pauses after each fill's PostgreSQL read and before each write-through.

    They stand for the network and the scheduler: fills and write-throughs reach Redis in any
    order and late, which is what the version check and the leases are there to survive.
    """

    async def slow_fill(_: Sequence[CacheWrite]) -> None:
        await asyncio.sleep(rng.uniform(0, fills))

    async def slow_write(_: Sequence[CacheWrite]) -> None:
        await asyncio.sleep(rng.uniform(0, writes))

    return delaying(slow_fill, slow_write)


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider whose finished spans can be counted."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def until(condition: Callable[[], bool]) -> None:
    """Wait for something another task or process makes true; fail after WAIT seconds."""
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still false after {WAIT} s")


def span_count(exporter: InMemorySpanExporter, name: str) -> int:
    return sum(1 for span in exporter.get_finished_spans() if span.name == name)


# -- a fill held while someone else acts ---------------------------------------------------


async def test_slow_fill_never_overwrites_a_newer_write_through(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fill that read version 1 and lands after a put of version 2 leaves version 2 cached."""
    [sid] = stage.make_securities(1, with_scores=True)
    held = HeldFills()
    async with SecureCache(stage.settings, wrap_redis=held.wrap) as cache:
        fill = asyncio.create_task(cache.scores.get(sid))
        async with asyncio.timeout(WAIT):
            await held.read.wait()
        written = await cache.scores.put(sid, update(9.5))
        assert written.version == 2
        held.release.set()
        async with asyncio.timeout(WAIT):
            old = await fill
        assert old is not None
        assert old.version == 1  # the fill really did read the older row

        entry = stage.cached(sid)
        assert isinstance(entry, Score)
        assert entry.version == 2
        assert values_of(entry) == values_of(written)
        again = await cache.scores.get(sid)
        assert again == written


def test_sync_gets_of_one_key_from_two_threads_share_its_load(stage: Stage) -> None:
    """Two threads of the sync twin read one cold key while its fill is held: the second joins
    the load on the loop (no part of the batching registry runs on a caller's thread) and
    both get the record, from one query."""
    [sid] = stage.make_securities(1, with_scores=True)
    reached, release = threading.Event(), threading.Event()

    async def hold(_writes: Sequence[CacheWrite]) -> None:
        reached.set()
        await asyncio.to_thread(release.wait, WAIT)

    settings = stage.settings
    with (
        sync.SecureCache(settings, wrap_redis=delaying(before_fill=hold)) as cache,
        ThreadPoolExecutor(2) as pool,
    ):
        first = pool.submit(cache.scores.get, sid)
        assert reached.wait(WAIT)
        second = pool.submit(cache.scores.get, sid)
        time.sleep(0.2)  # the second get is waiting for the held load by now
        release.set()
        results = [first.result(WAIT), second.result(WAIT)]
    assert results[0] is not None
    assert results[0] == results[1]


async def test_fill_of_an_absent_score_never_hides_a_new_insert(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fill that found no score and lands after the score's first put does not cache absent."""
    [sid] = stage.make_securities(1, with_scores=False)
    held = HeldFills()
    async with SecureCache(stage.settings, wrap_redis=held.wrap) as cache:
        fill = asyncio.create_task(cache.scores.get(sid))
        async with asyncio.timeout(WAIT):
            await held.read.wait()
        written = await cache.scores.put(sid, update(1.0))
        held.release.set()
        async with asyncio.timeout(WAIT):
            assert await fill is None

        entry = stage.cached(sid)
        assert isinstance(entry, Score)
        assert entry.version == written.version == 1
        assert await cache.scores.get(sid) == written


async def test_invalidate_during_a_fill_voids_its_lease(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fill in flight when invalidate() runs must not store: it would re-cache old data."""
    [sid] = stage.make_securities(1, with_scores=True)
    held = HeldFills()
    async with SecureCache(stage.settings, wrap_redis=held.wrap) as cache:
        fill = asyncio.create_task(cache.scores.get(sid))
        async with asyncio.timeout(WAIT):
            await held.read.wait()
        # The row changes outside the library, and whoever changed it invalidates: the fill
        # now carries a version that is both old and, with the key empty, unopposed.
        newer = stage.bump(sid)
        await cache.invalidate(sid)
        late = asyncio.create_task(cache.scores.get(sid))  # must not join the voided load
        await asyncio.sleep(0)
        held.release.set()
        async with asyncio.timeout(WAIT):
            old, after = await fill, await late
        assert old is not None
        assert old.version == newer - 1
        assert after is not None
        assert after.version == newer

        entry = stage.cached(sid)  # the late get's fill, never the voided one
        assert isinstance(entry, Score)
        assert entry.version == newer


@pytest.mark.parametrize("scope", ["value-and-lease", "whole-prefix"])
async def test_operator_deleting_keys_during_a_fill_voids_its_lease(
    scope: str,
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys deleted by hand (or lost to a flush or restart) during a fill void that fill."""
    [sid, other] = stage.make_securities(2, with_scores=True)
    keys = KeyScheme(stage.prefix)
    held = HeldFills(armed=False)
    async with SecureCache(stage.settings, wrap_redis=held.wrap) as cache:
        await cache.scores.get(other)  # something else cached under the prefix
        held.armed = True
        fill = asyncio.create_task(cache.scores.get(sid))
        async with asyncio.timeout(WAIT):
            await held.read.wait()
        assert stage.redis.exists(keys.lease(Kind.SCORE, sid)) == 1  # the fill holds a lease
        newer = stage.bump(sid)
        if scope == "value-and-lease":
            stage.redis.delete(keys.value(Kind.SCORE, sid), keys.lease(Kind.SCORE, sid))
        else:
            doomed = list(stage.redis.scan_iter(match=keys.pattern, count=500))
            assert len(doomed) >= 2
            stage.redis.delete(*doomed)
        held.release.set()
        async with asyncio.timeout(WAIT):
            await fill

        assert stage.cached(sid) is None
        fresh = await cache.scores.get(sid)
        assert fresh is not None
        assert fresh.version == newer


async def test_fill_slower_than_its_lease_does_not_store(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fill that outlives its lease is refused even though nobody else touched the key."""
    [sid] = stage.make_securities(1, with_scores=True)
    short = stage.settings.with_changes(lease_ms=200)
    held = HeldFills()
    async with SecureCache(short, wrap_redis=held.wrap) as cache:
        fill = asyncio.create_task(cache.scores.get(sid))
        async with asyncio.timeout(WAIT):
            await held.read.wait()
        # Changed in SQL with nobody invalidating: only the lease's expiry stands between
        # the fill's old row and a cache entry that would stay stale for a whole TTL.
        newer = stage.bump(sid)
        await asyncio.sleep(0.3)
        held.release.set()
        async with asyncio.timeout(WAIT):
            old = await fill
        assert old is not None
        assert old.version == newer - 1

        assert stage.cached(sid) is None
        fresh = await cache.scores.get(sid)
        assert fresh is not None
        assert fresh.version == newer


# -- reads and writes that overlap within one process ---------------------------------------


async def test_get_issued_after_a_put_returns_at_least_that_version(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A get that starts after put() returned must not join a fill that read the older row."""
    [sid] = stage.make_securities(1, with_scores=True)
    held = HeldFills()
    async with SecureCache(stage.settings, wrap_redis=held.wrap) as cache:
        early = asyncio.create_task(cache.scores.get(sid))
        async with asyncio.timeout(WAIT):
            await held.read.wait()
        written = await cache.scores.put(sid, update(8.0))
        late = asyncio.create_task(cache.scores.get(sid))
        await asyncio.sleep(0.05)  # give the late get every chance to finish on its own
        held.release.set()
        async with asyncio.timeout(WAIT):
            before, after = await early, await late
        assert before is not None
        assert before.version == 1
        assert after is not None
        assert after.version >= written.version, (
            f"get issued after put of version {written.version} returned {after.version}"
        )


async def test_get_joining_a_load_begun_before_another_process_wrote_is_bounded_by_that_load(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Single-flight across processes: a get may share an older load, but only until it ends."""
    [sid] = stage.make_securities(1, with_scores=True)
    held = HeldFills()
    async with (
        SecureCache(stage.settings, wrap_redis=held.wrap) as reader,
        SecureCache(stage.settings) as writer,
    ):
        early = asyncio.create_task(reader.scores.get(sid))
        async with asyncio.timeout(WAIT):
            await held.read.wait()
        written = await writer.scores.put(sid, update(4.0))
        # The reader's process cannot know of the write: this get joins the load in flight.
        joined = asyncio.create_task(reader.scores.get(sid))
        await asyncio.sleep(0)
        held.release.set()
        async with asyncio.timeout(WAIT):
            first, second = await early, await joined
        assert first is not None
        assert second == first
        assert first.version == written.version - 1  # the window: one load's duration
        # The older load did not reach Redis, and the next get sees the write.
        entry = stage.cached(sid)
        assert isinstance(entry, Score)
        assert entry.version == written.version
        assert await reader.scores.get(sid) == written


async def test_write_through_delayed_past_a_newer_write_and_an_invalidate_does_not_land(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An old write-through reaching Redis after a newer write and an invalidate stores nothing."""
    [sid] = stage.make_securities(1, with_scores=True)
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def delayed(_: Sequence[CacheWrite]) -> None:
        arrived.set()
        await release.wait()

    async with (
        SecureCache(stage.settings, wrap_redis=delaying(before_write_through=delayed)) as slow,
        SecureCache(stage.settings) as other,
    ):
        first = asyncio.create_task(slow.scores.put(sid, update(2.0)))
        async with asyncio.timeout(WAIT):
            await arrived.wait()  # version 2 is committed; its cache write is not done
        second = await other.scores.put(sid, update(7.0))
        assert second.version == 3
        await other.invalidate(sid)
        release.set()
        async with asyncio.timeout(WAIT):
            assert (await first).version == 2

        assert stage.scores([sid])[sid][0] == 3
        assert stage.divergent([sid]) == []


async def test_two_concurrent_writers_leave_redis_at_the_database_version(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two processes writing the same ids in lockstep: Redis ends at each row's last version."""
    ids = stage.make_securities(8, with_scores=True)
    rounds = 15
    rng = random.Random(7)
    # Both writers start every round together, so the last writes race too: with write-throughs
    # reaching Redis in random order, only the version check keeps the older one out.
    barrier = asyncio.Barrier(2)
    # Commits of the two writers land some 20-40 ms apart (row locks): the write-throughs
    # wait up to 60 ms, so they often reach Redis in the other order.
    async with (
        SecureCache(stage.settings, wrap_redis=jitter(rng, fills=0.01, writes=0.06)) as a,
        SecureCache(stage.settings, wrap_redis=jitter(rng, fills=0.01, writes=0.06)) as b,
    ):

        async def writer(cache: SecureCache, offset: float) -> list[int]:
            versions: list[int] = []
            for n in range(rounds):
                await barrier.wait()
                # Distinct values every time, so every write is a real change (a new version).
                written = await asyncio.gather(
                    *(cache.scores.put(i, update(offset + n / 10, value=9.8765)) for i in ids)
                )
                versions += [s.version for s in written]
                if n % 3 == 0:
                    await cache.scores.get_many(ids)  # fills racing the other's writes
            return versions

        async with asyncio.timeout(WAIT * 2):
            va, vb = await asyncio.gather(writer(a, 0.0), writer(b, 5.0))

    # Every write got its own version (no lost update): 2 per round per id.
    assert sorted(va + vb) == sorted(v for _ in ids for v in range(2, 2 + 2 * rounds))
    truth = stage.scores(ids)
    assert {v for v, _ in truth.values()} == {1 + 2 * rounds}
    # Redis holds each row's last version, or nothing (a write that lost its lease to the
    # other writer drops the entry rather than guess)...
    assert stage.divergent(ids) == []
    # ...and once read again, exactly the last version.
    async with SecureCache(stage.settings) as reader:
        assert len(await reader.scores.get_many(ids)) == len(ids)
    for id_ in ids:
        entry = stage.cached(id_)
        assert isinstance(entry, Score)
        assert (entry.version, values_of(entry)) == truth[id_]


async def test_mixed_load_leaves_no_key_where_redis_differs_from_postgresql(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """64 tasks in two processes mix puts, gets, get_manys and invalidates; then 0 divergences."""
    ids = stage.make_securities(500, with_scores=True) + stage.make_securities(
        500, with_scores=False
    )
    hot = ids[:10] + ids[500:510]  # contention: a fifth of the operations hit 20 keys
    tasks, operations = 64, 30
    outcomes: dict[str, int] = {"get": 0, "get_many": 0, "put": 0, "conflict": 0, "inv": 0}

    async def client(cache: SecureCache, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(operations):
            sid = rng.choice(hot) if rng.random() < 0.2 else rng.choice(ids)
            roll = rng.random()
            if roll < 0.45:
                score = await cache.scores.get(sid)
                assert score is None or score.security_id == sid
                outcomes["get"] += 1
            elif roll < 0.55:
                batch = [*rng.sample(ids, 8), sid]
                found = await cache.scores.get_many(batch)
                assert set(found) <= set(batch)
                await cache.securities.get_many(batch[:3])
                outcomes["get_many"] += 1
            elif roll < 0.80:
                new = update(*(round(rng.uniform(0, 10), 3) for _ in range(4)))
                await cache.scores.put(sid, new)
                outcomes["put"] += 1
            elif roll < 0.90:
                current = await cache.scores.get(sid)
                new = update(round(rng.uniform(0, 10), 3))
                try:
                    await cache.scores.put(
                        sid, new, if_version=None if current is None else current.version
                    )
                    outcomes["put"] += 1
                except ConflictError:
                    outcomes["conflict"] += 1
            else:
                await cache.invalidate(sid)
                outcomes["inv"] += 1

    async with (
        SecureCache(
            stage.settings, wrap_redis=jitter(random.Random(1), fills=0.005, writes=0.005)
        ) as p,
        SecureCache(
            stage.settings, wrap_redis=jitter(random.Random(2), fills=0.005, writes=0.005)
        ) as q,
    ):
        async with asyncio.timeout(60):
            await asyncio.gather(*(client(p if n % 2 else q, n) for n in range(tasks)))

    assert sum(outcomes.values()) == tasks * operations
    assert outcomes["put"] > 0
    assert outcomes["inv"] > 0
    cached = sum(1 for _ in stage.redis.scan_iter(match=f"{stage.prefix}:*:score", count=1000))
    assert cached > 100  # the scan below has real entries to check
    assert stage.divergent(ids) == []


# -- herds and batches ------------------------------------------------------------------------


async def test_500_gets_of_one_cold_key_make_one_postgresql_query(
    stage: Stage,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Single-flight: gets arriving while the key loads wait for that load, not a new query."""
    [sid] = stage.make_securities(1, with_scores=True)
    provider, exporter = spans
    held = HeldFills()
    async with SecureCache(stage.settings, tracer_provider=provider, wrap_redis=held.wrap) as cache:
        waves: list[asyncio.Task[Score | None]] = []
        waves += [asyncio.create_task(cache.scores.get(sid)) for _ in range(100)]
        async with asyncio.timeout(WAIT):
            await held.read.wait()  # the first wave's load is now inside PostgreSQL's answer
        for _ in range(4):  # later waves arrive while it is in flight: no batching can help
            waves += [asyncio.create_task(cache.scores.get(sid)) for _ in range(100)]
            await asyncio.sleep(0)
        held.release.set()
        async with asyncio.timeout(WAIT):
            results = await asyncio.gather(*waves)

    assert len(results) == 500
    assert span_count(exporter, "SELECT securecache.score") == 1
    assert held.calls == 1
    truth = stage.scores([sid])[sid]
    first = results[0]
    assert first is not None
    assert (first.version, values_of(first)) == truth
    assert all(r == first for r in results)


async def test_a_get_in_the_forming_batch_survives_a_write_detaching_its_id(
    stage: Stage,
) -> None:
    """While another load is in flight, a get of x waits in the batch forming; a write of x
    then detaches x from the loads in flight, and another get of x arrives: both gets are
    answered (the second joins the same forming batch instead of stranding the first)."""
    x, y = stage.make_securities(2, with_scores=True)
    gate = asyncio.Event()

    async def hold_y(keys: Sequence[str]) -> None:
        if any(f"{{{y}}}" in key for key in keys):
            await gate.wait()

    async with SecureCache(stage.settings, wrap_redis=delaying(before_entries=hold_y)) as cache:
        slow = asyncio.create_task(cache.scores.get(y))
        await asyncio.sleep(0.05)  # its MGET is held: a load is in flight
        first = asyncio.create_task(cache.scores.get(x))
        write = asyncio.create_task(cache.scores.put(x, update(1.5, 2.5, 3.5, 4.5)))
        second = asyncio.create_task(cache.scores.get(x))
        try:
            async with asyncio.timeout(WAIT):
                written = await write
                got = await asyncio.gather(first, second)
        finally:
            gate.set()
            await slow
    assert written.version >= 1
    assert all(score is not None and score.security_id == x for score in got)


async def test_a_caller_joined_to_an_abandoned_load_is_served_by_the_next(
    stage: Stage,
) -> None:
    """A lone get of x is in flight and a second get of x joins it; a write then detaches x,
    and the first caller is cancelled: the second is answered by a new load, never handed
    a CancelledError it did not ask for."""
    [x] = stage.make_securities(1, with_scores=True)
    held = asyncio.Event()
    first_mget = True

    async def hold_first(_keys: Sequence[str]) -> None:
        nonlocal first_mget
        if first_mget:
            first_mget = False
            held.set()
            await asyncio.sleep(WAIT)  # until cancelled

    async with SecureCache(stage.settings, wrap_redis=delaying(before_entries=hold_first)) as cache:
        first = asyncio.create_task(cache.scores.get(x))
        async with asyncio.timeout(WAIT):
            await held.wait()
        second = asyncio.create_task(cache.scores.get(x))
        await asyncio.sleep(0)  # it has joined the first load
        written = await cache.scores.put(x, update(7.5))
        first.cancel()
        async with asyncio.timeout(WAIT):
            got = await second
        with pytest.raises(asyncio.CancelledError):
            await first
    assert got is not None
    assert got.version == written.version


async def test_tasks_woken_by_a_batch_send_their_next_gets_as_one_batch(
    stage: Stage,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """32 tasks, each reading 6 cached keys one after the other: the gets that the callers
    of a batch issue as they wake travel together, so each round is about one MGET (the
    first get of the first round leaves alone), never a lone get and then the rest."""
    ids = stage.make_securities(40, with_scores=True)
    provider, exporter = spans
    async with SecureCache(stage.settings, tracer_provider=provider) as cache:
        assert len(await cache.scores.get_many(ids)) == 40  # warm
        exporter.clear()

        async def reader(n: int) -> None:
            for step in range(6):
                assert await cache.scores.get(ids[(n + step) % len(ids)]) is not None

        await asyncio.gather(*(reader(n) for n in range(32)))
    mgets = span_count(exporter, "MGET")
    assert 6 <= mgets <= 8, mgets  # one per round, plus the first round's lone get
    assert span_count(exporter, "EVALSHA lookup") == 0


async def test_concurrent_gets_of_200_cold_keys_travel_in_two_batches(
    stage: Stage,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """200 gets issued together: the first leaves at once, alone; the other 199 form the
    next batch while it is in flight and travel together: two lookups that take the leases
    too, two queries, two fill pipelines, never one per get."""
    ids = stage.make_securities(150, with_scores=True) + stage.make_securities(
        50, with_scores=False
    )
    provider, exporter = spans
    async with SecureCache(stage.settings, tracer_provider=provider) as cache:
        results = await asyncio.gather(*(cache.scores.get(i) for i in ids))

    for name in ("MGET", "EVALSHA lookup", "SELECT securecache.score", "EVALSHA cas"):
        assert span_count(exporter, name) == 2, name
    truth = stage.scores(ids)
    assert len(truth) == 150
    for id_, score in zip(ids, results, strict=True):
        if id_ in truth:
            assert score is not None
            assert (score.version, values_of(score)) == truth[id_]
        else:
            assert score is None


# -- what is only bounded ------------------------------------------------------------------


async def test_sql_change_without_the_listener_is_bounded_by_the_ttl(
    stage: Stage,
) -> None:
    """An UPDATE made in SQL with no listener running is served stale for at most one TTL."""
    [sid] = stage.make_securities(1, with_scores=True)
    short = stage.settings.with_changes(ttl_seconds=1.0, ttl_jitter=0.0, listen_changes=False)
    async with SecureCache(short) as cache:
        cached = await cache.scores.get(sid)
        assert cached is not None
        newer = stage.bump(sid)
        stale = await cache.scores.get(sid)
        assert stale == cached  # the window this test bounds: the cache has not heard
        await asyncio.sleep(1.1)
        fresh = await cache.scores.get(sid)
        assert fresh is not None
        assert fresh.version == newer


async def test_sql_insert_behind_a_negative_entry_is_bounded_by_the_negative_ttl(
    stage: Stage,
) -> None:
    """A score inserted in SQL while "absent" is cached appears within one negative TTL."""
    [sid] = stage.make_securities(1, with_scores=False)
    short = stage.settings.with_changes(negative_ttl_seconds=1.0, ttl_jitter=0.0)
    async with SecureCache(short) as cache:
        assert await cache.scores.get(sid) is None
        stage.db.execute(
            "INSERT INTO securecache.score (security_id, growth, value, quality, momentum)"
            " VALUES (%s, 1, 2, 3, 4)",
            (sid,),
        )
        assert await cache.scores.get(sid) is None  # the window: the marker still stands
        await asyncio.sleep(1.1)
        fresh = await cache.scores.get(sid)
        assert fresh is not None
        assert values_of(fresh) == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize("change", ["update", "delete"])
async def test_sql_change_with_the_listener_drops_the_cached_entry(
    change: str,
    stage: Stage,
) -> None:
    """With the listener on, an operator's UPDATE or DELETE in SQL drops the old entry."""
    [sid] = stage.make_securities(1, with_scores=True)
    async with SecureCache(stage.settings.with_changes(listen_changes=True)) as cache:
        listener = cache._listener
        assert listener is not None
        async with asyncio.timeout(WAIT):
            await listener.connected.wait()
        assert await cache.scores.get(sid) is not None
        assert isinstance(stage.cached(sid), Score)
        if change == "update":
            stage.bump(sid)
        else:
            stage.db.execute("DELETE FROM securecache.score WHERE security_id = %s", (sid,))
        await until(lambda: listener.applied > 0)
        left = stage.cached(sid)
        # An update leaves a version floor (nothing older may be stored); a delete, nothing.
        expected = codec.FLOOR if change == "update" else None
        assert left is expected, f"the {change} announced, the old entry is still there: {left}"
        fresh = await cache.scores.get(sid)
        truth = stage.scores([sid]).get(sid)
        if change == "delete":
            assert fresh is None
            assert truth is None
        else:
            assert fresh is not None
            assert (fresh.version, values_of(fresh)) == truth


async def test_entries_filled_together_expire_apart(
    stage: Stage,
) -> None:
    """TTL jitter: one batch of fills gets lifetimes spread over [ttl, ttl * (1 + jitter)]."""
    ids = stage.make_securities(200, with_scores=True)
    jittered = stage.settings.with_changes(ttl_seconds=100.0, ttl_jitter=0.2)
    async with SecureCache(jittered) as cache:
        assert len(await cache.scores.get_many(ids)) == 200
    keys = KeyScheme(stage.prefix)
    pipe = stage.redis.pipeline(transaction=False)
    for id_ in ids:
        pipe.pttl(keys.value(Kind.SCORE, id_))
    lifetimes = [int(ms) for ms in pipe.execute()]
    assert min(lifetimes) >= 100_000 - 5_000  # allow for the seconds this test has taken
    assert max(lifetimes) <= 120_000
    assert max(lifetimes) - min(lifetimes) > 10_000
    assert len(set(lifetimes)) > 150


async def _write_during_outage(
    cache: SecureCache, sid: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Score, RedisCache]:
    """Cut ``cache`` off from Redis, put a score (it commits), and reconnect it."""
    redis_cache = cache._cache
    assert redis_cache is not None
    dead = connect(
        "unix:///nonexistent/securecache-test.sock", cluster=False, timeout=0.25, max_connections=2
    )
    with monkeypatch.context() as patch:
        patch.setattr(redis_cache, "_client", dead)
        written = await cache.scores.put(sid, update(6.0))
        during = await cache.scores.get(sid)  # fail-open: straight from PostgreSQL
        assert during == written
        assert redis_cache.degraded
    await dead.aclose()
    return written, redis_cache


async def test_write_lost_to_an_outage_is_invalidated_before_it_is_read_again(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A put whose cache write failed: when Redis answers again, no read sees the old entry."""
    [sid] = stage.make_securities(1, with_scores=True)
    async with SecureCache(stage.settings) as cache:
        before = await cache.scores.get(sid)  # version 1 now cached
        assert before is not None
        written, redis_cache = await _write_during_outage(cache, sid, monkeypatch)
        stale = stage.cached(sid)
        assert isinstance(stale, Score)
        assert stale.version == 1  # the outage left the old entry behind

        after = await cache.scores.get(sid)  # the first read once Redis answers
        assert after is not None
        assert after.version == written.version, "read went back in time after an outage"
        assert not redis_cache.degraded
        entry = stage.cached(sid)
        assert entry is None or (isinstance(entry, Score) and entry.version == written.version)


async def test_outage_write_of_a_process_that_exits_is_bounded_by_the_ttl(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The replay list lives in the writer's memory: if it exits first, the TTL is the bound."""
    [sid] = stage.make_securities(1, with_scores=True)
    short = stage.settings.with_changes(ttl_seconds=1.0, ttl_jitter=0.0)
    async with SecureCache(short) as writer:
        assert await writer.scores.get(sid) is not None
        written, _ = await _write_during_outage(writer, sid, monkeypatch)
    stale = stage.cached(sid)
    assert isinstance(stale, Score)
    assert stale.version == written.version - 1  # the window: nobody is left to replay

    async with SecureCache(short) as reader:
        await asyncio.sleep(1.1)
        fresh = await reader.scores.get(sid)
        assert fresh == written


async def test_writer_that_dies_between_commit_and_cache_write_is_bounded_by_the_ttl(
    stage: Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit whose cache write never happens (the process died) is stale for one TTL."""
    [sid] = stage.make_securities(1, with_scores=True)
    short = stage.settings.with_changes(ttl_seconds=1.0, ttl_jitter=0.0)

    async def die(_: Sequence[CacheWrite]) -> None:
        raise RuntimeError("the writer's process ends here")

    async with SecureCache(short, wrap_redis=delaying(before_write_through=die)) as writer:
        assert await writer.scores.get(sid) is not None
        with pytest.raises(RuntimeError):
            await writer.scores.put(sid, update(3.0))
    committed = stage.scores([sid])[sid]
    stale = stage.cached(sid)
    assert isinstance(stale, Score)
    assert stale.version == committed[0] - 1  # the window: nobody will write the new version

    async with SecureCache(short) as reader:
        await asyncio.sleep(1.1)
        fresh = await reader.scores.get(sid)
        assert fresh is not None
        assert (fresh.version, values_of(fresh)) == committed
