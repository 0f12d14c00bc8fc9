"""PostgreSQL, the source of truth: the only module with SQL.

Every statement is parameterised. Connections come from a psycopg-pool pool; a connection
that cannot be had in ``db_timeout_seconds`` or a server that stops answering becomes
:class:`~securecache.errors.UnavailableError`, so callers see one typed failure.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from securecache.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    ValidationError,
)
from securecache.keys import Kind
from securecache.models import Score, ScoreUpdate, ScoreWrite, Security
from securecache.telemetry import Telemetry

CHANNEL: Final = "securecache_changes"
"""NOTIFY channel on which the schema's triggers announce every change of a row."""

_SECURITY_COLUMNS: Final = "id, name, symbol, exchange, version, updated_at"
_SCORE_COLUMNS: Final = "security_id, growth, value, quality, momentum, version, updated_at"

_SELECT_SECURITIES: Final = (
    f"SELECT {_SECURITY_COLUMNS} FROM securecache.security WHERE id = ANY(%s)"  # noqa: S608
)
_SELECT_SCORES: Final = (
    f"SELECT {_SCORE_COLUMNS} FROM securecache.score WHERE security_id = ANY(%s)"  # noqa: S608
)
_LIST_SECURITIES: Final = (
    f"SELECT {_SECURITY_COLUMNS} FROM securecache.security"  # noqa: S608
    " WHERE %(after)s::text IS NULL OR id > %(after)s ORDER BY id LIMIT %(limit)s"
)
# (xmax = 0) is true only for a freshly inserted row: it tells created from updated.
_UPSERT_SCORES: Final = f"""
INSERT INTO securecache.score AS s (security_id, growth, value, quality, momentum)
SELECT * FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::float8[], %s::float8[])
ORDER BY 1
ON CONFLICT (security_id) DO UPDATE
SET growth = EXCLUDED.growth, value = EXCLUDED.value,
    quality = EXCLUDED.quality, momentum = EXCLUDED.momentum
RETURNING {_SCORE_COLUMNS}, (xmax = 0) AS created
"""  # noqa: S608
_POOL_GLANCE_SECONDS: Final = 0.05
"""How long a request waits on an empty pool before it connects by itself."""
_ATTEMPTS: Final = 3
"""Tries of a write transaction that lost a deadlock or serialization conflict."""
_UPDATE_SCORE_IF_VERSION: Final = f"""
UPDATE securecache.score
SET growth = %s, value = %s, quality = %s, momentum = %s
WHERE security_id = %s AND version = %s
RETURNING {_SCORE_COLUMNS}, false AS created
"""  # noqa: S608
_CURRENT_SCORE_VERSION: Final = """
SELECT s.id, sc.version
FROM securecache.security s LEFT JOIN securecache.score sc ON sc.security_id = s.id
WHERE s.id = %s
"""
_VERSIONS: Final = {
    Kind.SECURITY: "SELECT id, version FROM securecache.security WHERE id = ANY(%s)",
    Kind.SCORE: "SELECT security_id, version FROM securecache.score WHERE security_id = ANY(%s)",
}
_VERSIONS_AT: Final = {
    Kind.SECURITY: "SELECT id, version, updated_at FROM securecache.security WHERE id = ANY(%s)",
    Kind.SCORE: "SELECT security_id, version, updated_at FROM securecache.score"
    " WHERE security_id = ANY(%s)",
}
_CHANGED_SINCE: Final = {
    Kind.SECURITY: "SELECT id, version FROM securecache.security WHERE updated_at > %s",
    Kind.SCORE: "SELECT security_id, version FROM securecache.score WHERE updated_at > %s",
}


def session_options(timeout: float) -> str:
    """Startup options giving each session the library's own timeouts.

    The database has defaults for the service roles, but any role may change its own
    defaults; these are set by the library on every connection, so a role's self-edit does
    not change how long the library waits. Nothing may run or wait for a lock longer than the
    caller waits for an answer, and no transaction may sit idle holding locks.
    """
    ms = max(1, round(timeout * 1000))
    return (
        f"-c statement_timeout={ms} -c lock_timeout={ms} "
        f"-c idle_in_transaction_session_timeout={max(ms, 10_000)}"
    )


def _security(row: Sequence[Any]) -> Security:
    return Security(
        id=row[0], name=row[1], symbol=row[2], exchange=row[3], version=row[4], updated_at=row[5]
    )


def _score(row: Sequence[Any]) -> Score:
    return Score(
        security_id=row[0],
        growth=row[1],
        value=row[2],
        quality=row[3],
        momentum=row[4],
        version=row[5],
        updated_at=row[6],
    )


IDLE_CHECK_SECONDS: Final = 1.0
"""A pooled connection idle longer than this is checked (one round trip) before use."""

_returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
    weakref.WeakKeyDictionary()
)


async def _stamp_return(conn: psycopg.AsyncConnection[Any]) -> None:
    """Note when a connection went back to the pool (the pool's ``reset`` callback)."""
    _returned[conn] = time.monotonic()


async def _check_if_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's ``check``: a round trip, for a connection that sat idle only.

    Checking every checkout would double the round trips of a read (the check is an empty
    query). A connection used in the last second has just worked; one that died since
    (the server restarted) fails its request, is discarded, and the next request gets
    another. One idle longer, which a restart may have cut while nobody noticed, is checked.
    """
    returned = _returned.get(conn)
    if returned is None or time.monotonic() - returned > IDLE_CHECK_SECONDS:
        await AsyncConnectionPool.check_connection(conn)


class Store:
    """Reads and writes the ``securecache`` schema through a connection pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        telemetry: Telemetry,
        *,
        direct: tuple[str, dict[str, Any], float] | None = None,
    ) -> None:
        self._pool = pool
        self._telemetry = telemetry
        self._direct = direct
        """How to open a connection without the pool (see :meth:`_checkout`)."""
        self._spares = asyncio.Semaphore(pool.max_size)
        self._recovering = False
        """True from a failure to reach PostgreSQL until the pool hands a connection over."""

    @classmethod
    def create(
        cls, url: str, telemetry: Telemetry, *, min_size: int, max_size: int, timeout: float
    ) -> Store:
        """A store whose pool connects in the background (see :meth:`open`)."""
        # Autocommit: each read is one statement; writes open explicit transactions.
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(timeout)),
            "options": session_options(timeout),
        }
        pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max(max_size, min_size, 1),
            timeout=timeout,
            open=False,
            # A connection that died with a restarted server is replaced on checkout
            # instead of failing one request (checked only after it sat idle: see below).
            check=_check_if_idle,
            reset=_stamp_return,
            kwargs=kwargs,
            name="securecache",
        )
        return cls(pool, telemetry, direct=(url, kwargs, timeout))

    async def open(self) -> None:
        """Start the pool without waiting: cached reads work while PostgreSQL is away."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _connection(
        self, operation: str, table: str
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        with self._telemetry.client_span(
            f"{operation} securecache.{table}", "postgresql", operation
        ) as span:
            span.set_attribute("db.collection.name", f"securecache.{table}")
            self._telemetry.db_queries.add(1, {"db.operation.name": operation})
            try:
                async with self._checkout() as conn:
                    yield conn
            except PoolTimeout as exc:
                self._recovering = True
                raise UnavailableError("the database did not answer in time") from exc
            except (psycopg.OperationalError, pg_errors.QueryCanceled, TimeoutError) as exc:
                self._recovering = True
                raise UnavailableError("the database is unavailable") from exc

    @asynccontextmanager
    async def _checkout(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection from the pool; or, after PostgreSQL was unreachable and until the pool
        hands a connection over again, one of our own if the pool cannot at once.

        After an outage the pool retries its connections on a back-off (1, 2, 4 s...), so
        for seconds after PostgreSQL is back every request would wait for the pool's next
        attempt, though a new connection would answer in milliseconds. Such a request opens
        its own (at most as many at once as the pool's size) and closes it after use; the
        pool refills on its own schedule. Otherwise requests wait for a pooled connection as
        usual: busy is not down.
        """
        if self._direct is None or not self._recovering:
            async with self._pool.connection() as conn:
                yield conn
            return
        url, kwargs, timeout = self._direct
        try:
            pooled = await self._pool.getconn(timeout=_POOL_GLANCE_SECONDS)
        except PoolTimeout:
            pooled = None
        if pooled is None:
            async with self._spares:
                async with asyncio.timeout(timeout):
                    spare = await psycopg.AsyncConnection.connect(url, **kwargs)
                async with spare:
                    yield spare
            return
        self._recovering = False
        try:
            yield pooled
        finally:
            await self._pool.putconn(pooled)

    async def ping(self) -> None:
        """Raise UnavailableError unless PostgreSQL answers a trivial query."""
        async with self._connection("SELECT", "ping") as conn:
            await conn.execute("SELECT 1")

    async def securities(self, ids: Sequence[str]) -> dict[str, Security]:
        """The securities among ``ids`` that exist: one query."""
        async with self._connection("SELECT", "security") as conn:
            cur = await conn.execute(_SELECT_SECURITIES, (list(ids),))
            return {row[0]: _security(row) for row in await cur.fetchall()}

    async def scores(self, ids: Sequence[str]) -> dict[str, Score]:
        """The scores of ``ids`` that exist: one query."""
        async with self._connection("SELECT", "score") as conn:
            cur = await conn.execute(_SELECT_SCORES, (list(ids),))
            return {row[0]: _score(row) for row in await cur.fetchall()}

    async def versions(self, kind: Kind, ids: Sequence[str]) -> dict[str, tuple[int, datetime]]:
        """Version and ``updated_at`` of the rows among ``ids`` that exist (the audit's read)."""
        table = "security" if kind is Kind.SECURITY else "score"
        async with self._connection("SELECT", table) as conn:
            cur = await conn.execute(_VERSIONS_AT[kind], (list(ids),))
            return {row[0]: (row[1], row[2]) for row in await cur.fetchall()}

    async def list_securities(self, limit: int, after: str | None) -> list[Security]:
        """Up to ``limit`` securities with ids after ``after``, in id (byte) order."""
        async with self._connection("SELECT", "security") as conn:
            cur = await conn.execute(_LIST_SECURITIES, {"after": after, "limit": limit})
            return [_security(row) for row in await cur.fetchall()]

    async def upsert_scores(
        self,
        updates: Mapping[str, ScoreUpdate],
        if_versions: Mapping[str, int | None] | None = None,
    ) -> dict[str, ScoreWrite]:
        """Write many scores in one transaction: all are committed, or none."""
        if_versions = if_versions or {}
        results: dict[str, ScoreWrite] = {}
        # Rows are written in id order, so two batches over the same ids lock them in the
        # same order and cannot deadlock each other.
        conditional = {i: v for i in sorted(updates) if (v := if_versions.get(i)) is not None}
        plain = sorted(i for i in updates if i not in conditional)
        async with self._connection("UPSERT", "score") as conn:
            try:
                for attempt in range(1, _ATTEMPTS + 1):
                    try:
                        async with conn.transaction():
                            for security_id, version in conditional.items():
                                results[security_id] = await self._write_one(
                                    conn, security_id, updates[security_id], version
                                )
                            if plain:
                                results.update(await self._write_many(conn, plain, updates))
                        break
                    except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                        # A deadlock or serialization failure with another writer: the
                        # transaction rolled back whole, so running it again is safe.
                        if attempt == _ATTEMPTS:
                            raise
                        results.clear()
            except pg_errors.ForeignKeyViolation as exc:
                missing = await self._first_unknown(conn, list(updates))
                raise NotFoundError(
                    f"unknown security {missing!r}", security_id=missing or "?"
                ) from exc
            except (pg_errors.InsufficientPrivilege, pg_errors.ReadOnlySqlTransaction) as exc:
                raise PermissionDeniedError(
                    f"this database role may not write scores: {exc.diag.message_primary}"
                ) from exc
            except pg_errors.CheckViolation as exc:
                raise ValidationError(
                    f"rejected by the database: {exc.diag.message_primary}"
                ) from exc
        return {i: results[i] for i in updates}

    async def _write_many(
        self, conn: psycopg.AsyncConnection[Any], ids: list[str], updates: Mapping[str, ScoreUpdate]
    ) -> dict[str, ScoreWrite]:
        """Upsert many scores in one statement (one round trip, whatever the batch size)."""
        columns = [
            ids,
            [updates[i].growth for i in ids],
            [updates[i].value for i in ids],
            [updates[i].quality for i in ids],
            [updates[i].momentum for i in ids],
        ]
        cur = await conn.execute(_UPSERT_SCORES, columns)
        return {
            row[0]: ScoreWrite(score=_score(row), created=bool(row[7]))
            for row in await cur.fetchall()
        }

    async def _write_one(
        self,
        conn: psycopg.AsyncConnection[Any],
        security_id: str,
        update: ScoreUpdate,
        if_version: int,
    ) -> ScoreWrite:
        """Update one score only if it is at ``if_version`` (a conditional write)."""
        values = (update.growth, update.value, update.quality, update.momentum)
        cur = await conn.execute(_UPDATE_SCORE_IF_VERSION, (*values, security_id, if_version))
        row = await cur.fetchone()
        if row is None:  # matched nothing: find out why
            current = await (await conn.execute(_CURRENT_SCORE_VERSION, (security_id,))).fetchone()
            if current is None:
                raise NotFoundError(f"unknown security {security_id!r}", security_id=security_id)
            actual = current[1]
            raise ConflictError(
                f"score of {security_id!r} is at version {actual}, not {if_version}",
                expected=if_version,
                actual=actual,
            )
        return ScoreWrite(score=_score(row), created=bool(row[7]))

    async def _first_unknown(
        self, conn: psycopg.AsyncConnection[Any], ids: list[str]
    ) -> str | None:
        cur = await conn.execute(
            "SELECT i FROM unnest(%s::text[]) AS i"
            " WHERE NOT EXISTS (SELECT 1 FROM securecache.security s WHERE s.id = i) LIMIT 1",
            (ids,),
        )
        row = await cur.fetchone()
        return None if row is None else str(row[0])


# -- the change channel (used by the listener on a connection of its own) -------------------


async def listen(conn: psycopg.AsyncConnection[Any]) -> None:
    """Subscribe ``conn`` to the change channel."""
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))


async def clock(conn: psycopg.AsyncConnection[Any]) -> datetime:
    """The server's clock (the listener's catch-up mark: the server's time, not ours)."""
    row = await (await conn.execute("SELECT clock_timestamp()")).fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


async def versions(
    conn: psycopg.AsyncConnection[Any], kind: Kind, ids: Sequence[str]
) -> dict[str, int]:
    """The current version of each of ``ids`` that exists: one query, whatever a notice said."""
    rows = await (await conn.execute(_VERSIONS[kind], (list(ids),))).fetchall()
    return {row[0]: row[1] for row in rows}


async def changed_since(
    conn: psycopg.AsyncConnection[Any], since: datetime
) -> list[tuple[Kind, str, int]]:
    """Every row changed after ``since``, as (kind, id, version)."""
    changes: list[tuple[Kind, str, int]] = []
    for kind, query in _CHANGED_SINCE.items():
        rows = await (await conn.execute(query, (since,))).fetchall()
        changes += [(kind, row[0], row[1]) for row in rows]
    return changes
