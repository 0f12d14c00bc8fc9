"""Changes made in PostgreSQL outside the library reach the cache.

The schema's triggers ``NOTIFY securecache_changes`` with ``{table, id, version, op}`` for
every committed change, whoever makes it (a pipeline loading securities, an operator's
UPDATE). Any role that can connect can send a notice on that channel too, so a notice is only
a hint that an id changed: the listener reads the current versions of the ids it was told
about from PostgreSQL, in batches (one query per kind for everything that arrived together),
and acts on those. An entry at any other version than the one PostgreSQL holds (older, or
claiming a version PostgreSQL never had) is replaced by a floor that refuses older writes
still in flight (a later insert thus also replaces a negative-cache marker); the entry of an
id PostgreSQL does not have is dropped, and no key is created for it.

Notifications sent while the listener is disconnected are lost, so on every reconnect it
catches up: every row whose ``updated_at`` is later than the last moment it knew itself
connected (less a margin for transactions that committed late) is treated as announced again.
Rows deleted during a disconnection cannot be found that way; their entries live out their TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import orjson
import psycopg

from securecache import store
from securecache.keys import KeyScheme, Kind
from securecache.models import validate_id

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS: Final = 5.0
APPLICATION_NAME: Final = "securecache-listener"
"""How the listener's connection shows in pg_stat_activity."""
RECONNECT_SECONDS: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
NOTICE_BATCH: Final = 1000
"""Most notices applied together: one version query per kind, one Redis pipeline."""
NOTICE_WINDOW_SECONDS: Final = 0.005
"""After a first notice, how long notices already on their way are gathered into its batch."""
STOP_SECONDS: Final = 5.0
"""Longest wait for the listener task to finish when the cache closes."""
_TABLES: Final = {"security": Kind.SECURITY, "score": Kind.SCORE}


class Settler(Protocol):
    """What the listener needs of the cache: bring entries to the versions PostgreSQL holds
    (a floor in place of any other version; nothing for a row that is gone)."""

    async def settle(self, targets: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[int]: ...

    async def announce(self, keys: Sequence[tuple[Kind, str]]) -> None: ...


class ChangeListener:
    """A background task: LISTEN, re-read, apply, heartbeat, reconnect and catch up."""

    def __init__(
        self,
        url: str,
        cache: Settler,
        keys: KeyScheme,
        *,
        floor_ttl_ms: int,
        catch_up_margin: timedelta = timedelta(seconds=60),
        timeout: float = 5.0,
        on_change: Callable[[Sequence[tuple[Kind, str]]], None] | None = None,
    ) -> None:
        """``on_change`` hears the ids of each applied batch at once (this process's near
        cache); other processes learn of them from the announcement on Redis."""
        self._url = url
        self._on_change = on_change
        self._timeout = timeout
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
        """Changes applied so far, after re-reading (for tests and metrics)."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="securecache-listener"
            )

    async def stop(self, grace: float = STOP_SECONDS) -> None:
        """Cancel the task and wait for it at most ``grace`` seconds.

        Bounded, so a closing application never hangs on a busy listener; the caller's own
        cancellation is not swallowed (``asyncio.wait`` leaves it to propagate).
        """
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            log.warning("change listener did not stop within %.1fs; leaving it", grace)

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
            self._url,
            autocommit=True,
            application_name=APPLICATION_NAME,
            # The library's own timeouts, whatever defaults the role has given itself.
            options=store.session_options(self._timeout),
        ) as conn:
            await store.listen(conn)
            now = await store.clock(conn)
            if self._alive_at is not None:
                changes = await store.changed_since(conn, self._alive_at - self._margin)
                log.info("change listener: catching up %d change(s)", len(changes))
                await self._apply(changes)
            self._alive_at = now
            self.connected.set()
            self._failures = 0  # a healthy connection: the next outage starts the backoff anew
            while True:
                hinted = await _gather(conn)
                if hinted:
                    await self._apply(await _current(conn, hinted))
                else:  # idle for a heartbeat: prove the connection works and move the mark
                    self._alive_at = await store.clock(conn)

    async def _apply(self, changes: Iterable[tuple[Kind, str, int]]) -> None:
        changed = list(changes)
        for start in range(0, len(changed), NOTICE_BATCH):
            chunk = changed[start : start + NOTICE_BATCH]
            targets = [
                (self._keys.value(kind, id_), self._keys.lease(kind, id_), version)
                for kind, id_, version in chunk
            ]
            await self._cache.settle(targets, self._floor_ttl_ms)
            changed_ids = [(kind, id_) for kind, id_, _ in chunk]
            if self._on_change is not None:
                self._on_change(changed_ids)
            # Near caches in every process let go of these ids too.
            await self._cache.announce(changed_ids)
        self.applied += len(changed)


async def _gather(conn: psycopg.AsyncConnection[Any]) -> dict[tuple[Kind, str], None]:
    """The (kind, id) pairs of the next notices: wait a heartbeat for one, then take what
    else has arrived within a few milliseconds, up to a batch. Empty after a quiet heartbeat.

    Each ``notifies`` generator is run to its end (``stop_after``/``timeout``), never left
    with ``break``, so the connection's lock is free for the queries that follow.
    """
    hinted: dict[tuple[Kind, str], None] = {}
    async for notify in conn.notifies(timeout=HEARTBEAT_SECONDS, stop_after=1):
        _add(hinted, notify.payload)
    if hinted:
        async for notify in conn.notifies(
            timeout=NOTICE_WINDOW_SECONDS, stop_after=NOTICE_BATCH - 1
        ):
            _add(hinted, notify.payload)
    return hinted


async def _current(
    conn: psycopg.AsyncConnection[Any], hinted: Iterable[tuple[Kind, str]]
) -> list[tuple[Kind, str, int]]:
    """What PostgreSQL holds now for each hinted id; 0 for an id it does not have."""
    by_kind: dict[Kind, list[str]] = {}
    for kind, id_ in hinted:
        by_kind.setdefault(kind, []).append(id_)
    changes: list[tuple[Kind, str, int]] = []
    for kind, ids in by_kind.items():
        held = await store.versions(conn, kind, ids)
        changes += [(kind, id_, held.get(id_, 0)) for id_ in ids]
    return changes


def _add(hinted: dict[tuple[Kind, str], None], payload: str) -> None:
    parsed = _parse(payload)
    if parsed is not None:
        hinted[parsed] = None


def _parse(payload: str) -> tuple[Kind, str] | None:
    """A notice as (kind, id); None (logged) for anything unexpected. Its version is ignored:
    the version that counts is the one PostgreSQL holds when the notice is applied."""
    try:
        data = orjson.loads(payload)
        return _TABLES[data["table"]], validate_id(data["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("change listener: ignoring unexpected notification %.200r", payload)
        return None
