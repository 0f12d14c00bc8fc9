"""Changes made in PostgreSQL outside the library reach the cache.

The schema's triggers ``NOTIFY securecache_changes`` with ``{table, id, version, op}`` for
every committed change, whoever makes it (a pipeline loading securities, an operator's
UPDATE). The listener replaces each cached entry older than the announced version with a
floor that refuses older writes still in flight (a later insert thus also replaces a
negative-cache marker); a deleted row's entry is dropped. Notifications sent while the listener is
disconnected are lost, so on every reconnect it catches up: every row whose ``updated_at`` is
later than the last moment it knew itself connected (less a margin for transactions that
committed late) is treated as announced again. Rows deleted during a disconnection cannot be
found that way; their entries live out their TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any, Final

import orjson
import psycopg

from securecache.cache import RedisCache
from securecache.keys import KeyScheme, Kind
from securecache.models import validate_id
from securecache.schema import CHANNEL

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS: Final = 5.0
APPLICATION_NAME: Final = "securecache-listener"
"""How the listener's connection shows in pg_stat_activity."""
RECONNECT_SECONDS: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
_TABLES: Final = {"security": Kind.SECURITY, "score": Kind.SCORE}
_CATCH_UP: Final = {
    Kind.SECURITY: "SELECT id, version FROM securecache.security WHERE updated_at > %s",
    Kind.SCORE: "SELECT security_id, version FROM securecache.score WHERE updated_at > %s",
}


class ChangeListener:
    """A background task: LISTEN, apply, heartbeat, reconnect and catch up."""

    def __init__(
        self,
        url: str,
        cache: RedisCache,
        keys: KeyScheme,
        *,
        floor_ttl_ms: int,
        catch_up_margin: timedelta = timedelta(seconds=60),
    ) -> None:
        self._url = url
        self._cache = cache
        self._keys = keys
        self._margin = catch_up_margin
        self._floor_ttl_ms = floor_ttl_ms
        self._task: asyncio.Task[None] | None = None
        self._alive_at: datetime | None = None
        self._failures = 0
        self.connected = asyncio.Event()
        """Set while LISTEN is in place (tests and readiness wait on it)."""
        self.applied = 0
        """Notifications applied so far (for tests and metrics)."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="securecache-listener"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: reconnect, never die
                self.connected.clear()
                delay = RECONNECT_SECONDS[min(self._failures, len(RECONNECT_SECONDS) - 1)]
                self._failures += 1
                log.warning("change listener disconnected (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name=APPLICATION_NAME
        ) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            now = await self._clock(conn)
            if self._alive_at is not None:
                await self._catch_up(conn, self._alive_at - self._margin)
            self._alive_at = now
            self.connected.set()
            self._failures = 0  # a healthy connection: the next outage starts the backoff anew
            while True:
                async for notify in conn.notifies(timeout=HEARTBEAT_SECONDS):
                    await self._apply([_parse(notify.payload)])
                # Idle for a heartbeat: prove the connection works and move the mark.
                self._alive_at = await self._clock(conn)

    @staticmethod
    async def _clock(conn: psycopg.AsyncConnection[Any]) -> datetime:
        row = await (await conn.execute("SELECT clock_timestamp()")).fetchone()
        assert row is not None
        value: datetime = row[0]
        return value

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any], since: datetime) -> None:
        changes: list[tuple[Kind, str, int] | None] = []
        for kind, query in _CATCH_UP.items():
            rows = await (await conn.execute(query, (since,))).fetchall()
            changes += [(kind, row[0], row[1]) for row in rows]
        log.info("change listener: catching up %d change(s) since %s", len(changes), since)
        await self._apply(changes)

    async def _apply(self, changes: list[tuple[Kind, str, int] | None]) -> None:
        targets = [
            (self._keys.value(kind, id_), self._keys.lease(kind, id_), version)
            for kind, id_, version in filter(None, changes)
        ]
        await self._cache.invalidate_older(targets, self._floor_ttl_ms)
        self.applied += len(targets)


def _parse(payload: str) -> tuple[Kind, str, int] | None:
    """A notification as (kind, id, version); None (logged) for anything unexpected."""
    try:
        data = orjson.loads(payload)
        kind = _TABLES[data["table"]]
        version = int(data["version"])  # 0 for a delete: drops any entry
        return kind, validate_id(data["id"]), version
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("change listener: ignoring unexpected notification %.200r", payload)
        return None
