"""A hypothesis state machine: random sequences of reads, writes and invalidations.

The machine drives the sync twin against the real servers and keeps a model: the last
acknowledged version and values of every score. After every step, every Redis entry of the
machine's ids must match PostgreSQL (or be absent), and every read must agree with the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from entries import decode
from securecache import ConflictError, Score, ScoreUpdate, Security, Settings, codec
from securecache.keys import KeyScheme, Kind
from securecache.sync import SecureCache

MakeSecurities = Callable[..., list[str]]
Values = tuple[float, float, float, float]
Row = tuple[int, Values]

IDS = 6
"""Securities per example: three start with a score, three without."""

index = st.integers(min_value=0, max_value=IDS - 1)
number = st.integers(min_value=0, max_value=1000).map(lambda n: n / 100)
updates = st.builds(ScoreUpdate, growth=number, value=number, quality=number, momentum=number)


def as_bytes(raw: object) -> bytes | None:
    assert raw is None or isinstance(raw, bytes), raw
    return raw


def values_of(score: Score | ScoreUpdate) -> Values:
    return (score.growth, score.value, score.quality, score.momentum)


def db_scores(conn: psycopg.Connection[Any], ids: Sequence[str]) -> dict[str, Row]:
    rows = conn.execute(
        "SELECT security_id, version, growth, value, quality, momentum"
        " FROM securecache.score WHERE security_id = ANY(%s)",
        (list(ids),),
    ).fetchall()
    return {row[0]: (row[1], (row[2], row[3], row[4], row[5])) for row in rows}


def db_securities(conn: psycopg.Connection[Any], ids: Sequence[str]) -> dict[str, Security]:
    rows = conn.execute(
        "SELECT id, name, symbol, exchange, version, updated_at"
        " FROM securecache.security WHERE id = ANY(%s)",
        (list(ids),),
    ).fetchall()
    return {
        r[0]: Security(
            id=r[0], name=r[1], symbol=r[2], exchange=r[3], version=r[4], updated_at=r[5]
        )
        for r in rows
    }


def test_random_operations_keep_reads_and_redis_faithful_to_postgresql(
    settings: Settings,
    make_securities: MakeSecurities,
    redis_admin: redis.Redis,
    admin_conn: psycopg.Connection[Any],
    key_prefix: str,
) -> None:
    """Any run of gets, puts, invalidations and flushes: reads match the model, Redis the DB."""
    keys = KeyScheme(key_prefix)

    class CacheMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            # Fresh ids for every example: nothing cached or written by an earlier one.
            self.ids = make_securities(IDS // 2, with_scores=True) + make_securities(
                IDS - IDS // 2, with_scores=False
            )
            rows = db_scores(admin_conn, self.ids)
            self.model: dict[str, Row | None] = {i: rows.get(i) for i in self.ids}
            self.securities = db_securities(admin_conn, self.ids)
            self.cache = SecureCache(settings)
            self.cache.open()

        def teardown(self) -> None:
            self.cache.close()

        # -- the model's expectations ------------------------------------------------------

        def expect(self, sid: str, score: Score | None) -> None:
            """A read with no concurrent writer returns exactly the acknowledged row."""
            row = self.model[sid]
            if row is None:
                assert score is None, f"{sid}: read {score}, but no score was ever written"
            else:
                assert score is not None, f"{sid}: read nothing, expected version {row[0]}"
                assert score.security_id == sid
                assert (score.version, values_of(score)) == row

        def next_version(self, sid: str, new: ScoreUpdate) -> int:
            row = self.model[sid]
            if row is None:
                return 1
            # The trigger leaves the version alone when nothing actually changes.
            return row[0] if row[1] == values_of(new) else row[0] + 1

        # -- rules -------------------------------------------------------------------------

        @rule(i=index)
        def get(self, i: int) -> None:
            sid = self.ids[i]
            self.expect(sid, self.cache.scores.get(sid))

        @rule(picks=st.lists(index, max_size=IDS))
        def get_many(self, picks: list[int]) -> None:
            wanted = [self.ids[i] for i in picks]
            found = self.cache.scores.get_many(wanted)
            assert set(found) == {s for s in wanted if self.model[s] is not None}
            for sid in set(wanted):
                self.expect(sid, found.get(sid))

        @rule(i=index)
        def get_security(self, i: int) -> None:
            sid = self.ids[i]
            assert self.cache.securities.get(sid) == self.securities[sid]

        @rule(i=index, new=updates)
        def put(self, i: int, new: ScoreUpdate) -> None:
            sid = self.ids[i]
            expected = self.next_version(sid, new)
            score = self.cache.scores.put(sid, new)
            assert score.version == expected
            assert values_of(score) == values_of(new)
            self.model[sid] = (score.version, values_of(score))

        @rule(i=index, new=updates, offset=st.sampled_from([0, 0, -1, 1]))
        def put_if_version(self, i: int, new: ScoreUpdate, offset: int) -> None:
            sid = self.ids[i]
            row = self.model[sid]
            current = None if row is None else row[0]
            if_version = max(1, (current or 1) + offset)
            if if_version != current:
                with pytest.raises(ConflictError) as caught:
                    self.cache.scores.put(sid, new, if_version=if_version)
                assert caught.value.actual == current
                return
            expected = self.next_version(sid, new)
            score = self.cache.scores.put(sid, new, if_version=if_version)
            assert score.version == expected
            self.model[sid] = (score.version, values_of(score))

        @rule(i=index)
        def invalidate(self, i: int) -> None:
            self.cache.invalidate(self.ids[i])

        @rule(i=index)
        def operator_writes_and_invalidates(self, i: int) -> None:
            """A change made in SQL, followed by the invalidation its announcer would send."""
            sid = self.ids[i]
            if self.model[sid] is None:
                admin_conn.execute(
                    "INSERT INTO securecache.score (security_id, growth, value, quality,"
                    " momentum) VALUES (%s, 5, 5, 5, 5)",
                    (sid,),
                )
            else:
                admin_conn.execute(
                    "UPDATE securecache.score"
                    " SET quality = CASE WHEN quality = 5 THEN 5.5 ELSE 10 - quality END"
                    " WHERE security_id = %s",
                    (sid,),
                )
            self.cache.invalidate(sid)
            self.model[sid] = db_scores(admin_conn, [sid])[sid]

        @rule()
        def flush(self) -> None:
            """Every key of the prefix disappears, as after FLUSHDB or a restart."""
            doomed = list(redis_admin.scan_iter(match=keys.pattern, count=1000))
            if doomed:
                redis_admin.delete(*doomed)

        @rule(i=index, new=updates)
        def put_while_reading(self, i: int, new: ScoreUpdate) -> None:
            """A read racing a write returns the version before it or the version after it."""
            sid = self.ids[i]
            before = self.model[sid]
            with ThreadPoolExecutor(max_workers=2) as pool:
                writing = pool.submit(self.cache.scores.put, sid, new)
                reading = pool.submit(self.cache.scores.get, sid)
                written, read = writing.result(), reading.result()
            after = (written.version, values_of(written))
            self.model[sid] = after
            seen = None if read is None else (read.version, values_of(read))
            assert seen in (before, after), f"{sid}: read {seen}, before {before}, after {after}"
            if before is not None:
                assert read is not None
                assert read.version >= before[0]  # never older than what was acknowledged

        # -- invariants --------------------------------------------------------------------

        @invariant()
        def redis_holds_the_database_row_or_nothing(self) -> None:
            truth = db_scores(admin_conn, self.ids)
            assert truth == {s: r for s, r in self.model.items() if r is not None}
            raws = redis_admin.mget(
                [keys.value(Kind.SCORE, s) for s in self.ids]
                + [keys.value(Kind.SECURITY, s) for s in self.ids]
            )
            for sid, raw in zip(self.ids, raws[:IDS], strict=True):
                entry = decode(Score, as_bytes(raw))
                if entry is codec.ABSENT:
                    assert sid not in truth, f"{sid}: cached absent, but the row exists"
                elif entry is not None:
                    assert isinstance(entry, Score), f"{sid}: corrupt entry {raw!r:.80}"
                    assert (entry.version, values_of(entry)) == truth.get(sid), sid
            for sid, raw in zip(self.ids, raws[IDS:], strict=True):
                cached = decode(Security, as_bytes(raw))
                assert cached is None or cached == self.securities[sid], sid

    run_state_machine_as_test(
        CacheMachine,
        settings=hypothesis_settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
