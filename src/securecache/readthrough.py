"""The caching policy: read-through with batching, single-flight and leases.

I/O-free orchestration over :mod:`securecache.store` and :mod:`securecache.cache`.

Every read is a batch. A ``get`` joins the batch of the current event-loop iteration: the
first caller schedules a flush with ``call_soon`` (no timer, so a lone get waits for nothing),
and every get or get_many issued before the loop comes round rides the same lookup (one
script call that returns the entries and takes the leases of the misses), the same
PostgreSQL query for the misses and the same pipelined fill. A key already being loaded is
not loaded again: later callers wait on the same future (single-flight), so a herd on a cold
key makes one query per process; a miss whose lease another process holds waits briefly for
that process's fill, so a herd across the fleet makes about one. With a near cache, hits
are served from memory before any of this (:mod:`securecache.nearcache`).

Writes live here too, beside the reads whose fills they must void: :meth:`ReadThrough.write`
runs the whole lease sequence of a write-through (take the leases over, commit, then store or
give back or drop), and :func:`drop` drops the records of an id. The Redis side
is reached only through :class:`CacheBackend`, so tests can put a fault or a delay in between
without touching private names.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from securecache import codec, models
from securecache.audit import Audit, Versions
from securecache.cache import (
    LEASE_HELD,
    LEASE_TAKEN,
    NO_LEASE_NEEDED,
    STORED,
    CacheWrite,
)
from securecache.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from securecache.keys import KeyScheme, Kind
from securecache.models import Score, Security
from securecache.nearcache import MISSING, NearCache
from securecache.telemetry import SOURCE, Telemetry

log = logging.getLogger(__name__)

R = TypeVar("R", Security, Score)
T = TypeVar("T")
Fetch = Callable[[Sequence[str]], Awaitable[dict[str, R]]]

NOTHING_WRITTEN: tuple[type[Exception], ...] = (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
"""Failures of a commit after which PostgreSQL certainly changed nothing."""


class CacheBackend(Protocol):
    """The Redis round trips the policy needs (:class:`securecache.cache.RedisCache`).

    Every method fails open: no answer from Redis is a miss, a refused lease or a write not
    done, never an exception.
    """

    async def lookup(
        self, pairs: Sequence[tuple[str, str]], token: str, lease_ms: int
    ) -> list[tuple[bytes | None, int]] | None: ...

    async def take_leases(
        self, lease_keys: Sequence[str], token: str, ttl_ms: int, *, take_over: bool = False
    ) -> list[bool] | None: ...

    async def release_leases(self, lease_keys: Sequence[str]) -> None: ...

    async def compare_and_set(
        self, writes: Sequence[CacheWrite], token: str, *, write_through: bool = False
    ) -> list[int]: ...

    async def delete(self, keys: Sequence[str]) -> bool: ...

    async def settle(self, targets: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[int]: ...

    async def announce(self, keys: Sequence[tuple[Kind, str]]) -> None: ...


MAX_BATCH = models.MAX_BATCH
"""Most keys in one round trip; bigger batches are split (bounded Redis and SQL arguments)."""


class TTLPolicy:
    """Entry lifetimes with jitter, so entries written together do not expire together."""

    def __init__(self, ttl: float, negative_ttl: float, jitter: float) -> None:
        self._ttl_ms = ttl * 1000
        self._negative_ms = negative_ttl * 1000
        self._jitter = jitter

    def ttl_ms(self, present: bool) -> int:
        base = self._ttl_ms if present else self._negative_ms
        return max(1, int(base * (1 + random.uniform(0, self._jitter))))


class ReadThrough(Generic[R]):
    """Read-through for one kind of record (securities or scores)."""

    def __init__(
        self,
        *,
        kind: Kind,
        record_type: type[R],
        fetch: Fetch[R],
        cache: CacheBackend | None,
        keys: KeyScheme,
        ttl: TTLPolicy,
        telemetry: Telemetry,
        lease_ms: int,
        lease_wait_ms: int = 0,
        versions: Versions | None = None,
        audit: Audit | None = None,
        near: NearCache | None = None,
    ) -> None:
        self._kind = kind
        # Span names follow the facade: "securecache securities.get", "securecache scores.get".
        self._namespace = {Kind.SECURITY: "securities", Kind.SCORE: "scores"}[kind]
        self._type: type[R] = record_type
        self._fetch: Fetch[R] = fetch
        self._cache = cache
        self._keys = keys
        self._ttl = ttl
        self._telemetry = telemetry
        self._lease_ms = lease_ms
        self._lease_wait = min(lease_wait_ms, lease_ms) / 1000
        self._versions = versions
        self._near = near
        self._audit = audit if audit is not None and audit.enabled else None
        self._pending: dict[str, asyncio.Future[tuple[R | None, str]]] = {}
        self._inflight: dict[str, asyncio.Future[tuple[R | None, str]]] = {}
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def kind(self) -> Kind:
        return self._kind

    async def get(self, id_: str) -> R | None:
        """One record: from the near cache, or loaded in the batch of this loop iteration."""
        near = self._near
        if near is not None:
            found = near.get((self._kind, id_))
            if found is not MISSING:
                record: R | None = found
                return record
        with self._telemetry.call_span(f"securecache {self._namespace}.get") as span:
            record, source = await asyncio.shield(self._future(id_))
            span.set_attribute(SOURCE, source)
            return record

    async def get_many(self, ids: Iterable[str]) -> dict[str, R]:
        """The records among ``ids`` that exist, keyed by id."""
        unique = list(dict.fromkeys(ids))
        found: dict[str, R] = {}
        near = self._near
        if near is not None:
            rest = []
            for id_ in unique:
                hit = near.get((self._kind, id_))
                if hit is MISSING:
                    rest.append(id_)
                elif hit is not None:
                    found[id_] = hit
            unique = rest
        if not unique:
            return found
        with self._telemetry.call_span(f"securecache {self._namespace}.get_many") as span:
            span.set_attribute("securecache.ids", len(unique))
            futures = [self._future(i) for i in unique]
            results = await asyncio.shield(asyncio.gather(*futures))
            found.update({i: r for i, (r, _) in zip(unique, results, strict=True) if r is not None})
            return found

    def _future(self, id_: str) -> asyncio.Future[tuple[R | None, str]]:
        future = self._inflight.get(id_) or self._pending.get(id_)
        if future is None:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            # A waiter cancelled before the result arrives must not leave an
            # unretrieved exception behind.
            future.add_done_callback(_consume)
            self._pending[id_] = future
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, {}
        self._inflight.update(batch)
        items = list(batch.items())
        for start in range(0, len(items), MAX_BATCH):
            chunk = dict(items[start : start + MAX_BATCH])
            task = asyncio.get_running_loop().create_task(self._load(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _load(self, batch: dict[str, asyncio.Future[tuple[R | None, str]]]) -> None:
        try:
            await self._read_through(batch)
        except BaseException as exc:
            # Only the ids still waiting get the error: values already served from Redis
            # stand, so cached reads keep working while PostgreSQL is down.
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            for id_, future in batch.items():
                if self._inflight.get(id_) is future:
                    del self._inflight[id_]

    async def _read_through(self, batch: dict[str, asyncio.Future[tuple[R | None, str]]]) -> None:
        """Redis first (the entries, and a lease for each miss, in one round trip); the
        misses from PostgreSQL in one query; then the fills under those leases.

        Hits are resolved right after the lookup, so a PostgreSQL failure reaches only the
        misses; misses are resolved once their fill is done (a caller that next looks in
        Redis finds the value there). A miss whose lease another process holds waits a
        little for that process's fill instead of querying too (one query per key across
        the fleet).
        """
        token = secrets.token_hex(8)
        ticket = self._near.ticket() if self._near is not None else 0
        misses, leases, corrupt = await self._lookup(batch, token, ticket)
        if not misses:
            return
        contested = [i for i in misses if leases[i] == LEASE_HELD]
        if contested and self._lease_wait > 0:
            filled = await self._await_fills(contested, token, leases)
            for id_, record in filled.items():
                _resolve(batch[id_], record, "redis")
                self._remember(id_, record, ticket)
            misses = [i for i in misses if i not in filled]
            if not misses:
                return
        rows = await self._fetch(misses)
        writes = [
            CacheWrite(
                key=self._keys.value(self._kind, id_),
                lease_key=self._keys.lease(self._kind, id_),
                version=codec.entry_version(rows.get(id_)),
                entry=codec.encode_entry(rows.get(id_)),
                ttl_ms=self._ttl.ttl_ms(id_ in rows),
                replaces=corrupt.get(id_, b""),
            )
            for id_ in misses
            if leases[id_] == LEASE_TAKEN
        ]
        stored: set[str] = set()
        if writes and self._cache:
            outcomes = await self._cache.compare_and_set(writes, token)
            self._count_writes(outcomes)
            await self._check_claims(writes, outcomes)
            stored = {w.key for w, o in zip(writes, outcomes, strict=True) if o == STORED}
        for id_ in misses:
            record = rows.get(id_)
            _resolve(batch[id_], record, "postgres" if record is not None else "absent")
            # The near cache follows Redis: a fill it refused (lease lost) is not kept either.
            if self._keys.value(self._kind, id_) in stored:
                self._remember(id_, record, ticket)

    def _remember(self, id_: str, record: R | None, ticket: int) -> None:
        """Keep what was just read in the near cache, unless invalidated since ``ticket``."""
        if self._near is not None:
            self._near.put((self._kind, id_), record, ticket)

    async def _lookup(
        self, batch: dict[str, asyncio.Future[tuple[R | None, str]]], token: str, ticket: int
    ) -> tuple[list[str], dict[str, int | None], dict[str, bytes]]:
        """One lookup: resolve the hits; return the misses, their lease states (None: Redis
        did not answer) and the corrupt entries seen (which a fill may replace)."""
        ids = list(batch)
        kind = self._kind
        pairs = [(self._keys.value(kind, i), self._keys.lease(kind, i)) for i in ids]
        answer = await self._cache.lookup(pairs, token, self._lease_ms) if self._cache else None
        misses: list[str] = []
        leases: dict[str, int | None] = {}
        corrupt: dict[str, bytes] = {}
        audit = self._audit
        hits: list[tuple[str, Security | Score | None]] = []
        for index, id_ in enumerate(ids):
            raw, lease = answer[index] if answer is not None else (None, None)
            entry = codec.decode_entry(self._type, raw, id_)
            if entry is codec.ABSENT:
                _resolve(batch[id_], None, "absent")
                self._remember(id_, None, ticket)
                if audit is not None:
                    hits.append((id_, None))
            elif isinstance(entry, self._type):
                _resolve(batch[id_], entry, "redis")
                self._remember(id_, entry, ticket)
                if audit is not None:
                    hits.append((id_, entry))
            else:
                if entry is codec.CORRUPT and raw is not None:
                    corrupt[id_] = raw
                    self._telemetry.corrupt.add(1, {"securecache.kind": str(kind)})
                    log.warning("ignoring a corrupt cache entry for %s %s", kind, id_)
                misses.append(id_)
                leases[id_] = lease
        attrs = {"securecache.kind": str(kind)}
        self._telemetry.hits.add(len(ids) - len(misses), attrs)
        if audit is not None:
            audit.sample(kind, hits)
        if misses:
            self._telemetry.misses.add(len(misses), attrs)
        # Entries the script took for servable but that fail our checks need a lease too.
        unleased = [i for i in corrupt if leases[i] == NO_LEASE_NEEDED]
        if unleased:
            leases.update(await self._take_leases(unleased, token))
        return misses, leases, corrupt

    async def _take_leases(self, ids: Sequence[str], token: str) -> dict[str, int | None]:
        """Leases on ``ids`` (SET NX), as lease states; None where Redis did not answer."""
        if self._cache is None:
            return dict.fromkeys(ids)
        lease_keys = [self._keys.lease(self._kind, i) for i in ids]
        taken = await self._cache.take_leases(lease_keys, token, self._lease_ms)
        if taken is None:
            return dict.fromkeys(ids)
        return {i: LEASE_TAKEN if ok else LEASE_HELD for i, ok in zip(ids, taken, strict=True)}

    async def _await_fills(
        self, ids: Sequence[str], token: str, leases: dict[str, int | None]
    ) -> dict[str, R | None]:
        """Poll Redis for the fills of ``ids`` that another process's lease promises.

        Short sleeps growing from 1 ms, for at most the lease wait (never longer than the
        lease). Each poll is a lookup: if the other process gave its lease up, this one
        takes it (``leases`` is updated) and fills the key itself. What has not arrived by
        the deadline the caller reads from PostgreSQL.
        """
        assert self._cache is not None
        found: dict[str, R | None] = {}
        pending = list(ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease_wait
        pause = 0.001
        while pending and loop.time() + pause <= deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.016)
            kind = self._kind
            pairs = [(self._keys.value(kind, i), self._keys.lease(kind, i)) for i in pending]
            answer = await self._cache.lookup(pairs, token, self._lease_ms)
            if answer is None:
                break  # Redis stopped answering: PostgreSQL it is
            still: list[str] = []
            for id_, (raw, lease) in zip(pending, answer, strict=True):
                entry = codec.decode_entry(self._type, raw, id_)
                if entry is codec.ABSENT:
                    found[id_] = None
                elif isinstance(entry, self._type):
                    found[id_] = entry
                elif lease == LEASE_HELD:
                    still.append(id_)
                else:
                    leases[id_] = lease  # ours now (or corrupt): no more waiting
            pending = still
        kind_name = str(self._kind)
        self._telemetry.lease_waits.add(
            len(found), {"securecache.kind": kind_name, "outcome": "filled"}
        )
        self._telemetry.lease_waits.add(
            len(ids) - len(found), {"securecache.kind": kind_name, "outcome": "not_filled"}
        )
        return found

    async def _check_claims(self, writes: Sequence[CacheWrite], outcomes: Sequence[int]) -> None:
        """Entries that refused a write because they claim a newer version are checked
        against PostgreSQL; one claiming a version PostgreSQL does not hold was not written
        by the library (a Redis user planted it) and is dropped."""
        claims: dict[str, int] = {}
        for write, outcome in zip(writes, outcomes, strict=True):
            parsed = self._keys.parse(write.key)
            if outcome > 0 and parsed is not None:
                claims[parsed[1]] = outcome
        if not claims or self._versions is None:
            return
        held = await self._versions(self._kind, list(claims))
        forged = [i for i, claimed in claims.items() if i not in held or claimed > held[i][0]]
        if forged:
            self._telemetry.corrupt.add(len(forged), {"securecache.kind": str(self._kind)})
            log.warning(
                "dropping %d %s entr%s claiming versions PostgreSQL never held: %s",
                len(forged),
                self._kind,
                "y" if len(forged) == 1 else "ies",
                ", ".join(sorted(forged)[:10]),
            )
            await drop(self._cache, [self], forged)

    def _count_writes(self, outcomes: Sequence[int]) -> None:
        attrs = {"securecache.kind": str(self._kind)}
        stored = sum(1 for o in outcomes if o == STORED)
        newer = sum(1 for o in outcomes if o > 0)
        self._telemetry.fills.add(stored, attrs)
        if len(outcomes) - stored:
            self._telemetry.cas_rejections.add(newer, {**attrs, "securecache.reason": "newer"})
            self._telemetry.cas_rejections.add(
                len(outcomes) - stored - newer, {**attrs, "securecache.reason": "lease"}
            )

    async def write(
        self,
        ids: Sequence[str],
        commit: Callable[[], Awaitable[T]],
        committed: Callable[[T], Sequence[R]],
    ) -> T:
        """Commit a write in PostgreSQL and bring the cache along, whatever happens.

        Before the commit the leases of ``ids`` are taken over, which voids every fill in
        flight (a fill that read the old row can no longer store it). Then: if the commit
        certainly changed nothing, the leases are given back; if its outcome is unknown
        (cancelled, connection lost), the entries are dropped; if it committed, the records
        ``committed(result)`` are stored under the leases. The cache steps are shielded: a
        caller cancelled at the wrong moment must not leave an old value cached.
        """
        token = secrets.token_hex(8)
        self.forget(ids)
        leases = [self._keys.lease(self._kind, i) for i in ids]
        if self._cache is not None:
            await self._cache.take_leases(leases, token, self._lease_ms, take_over=True)
        try:
            result = await commit()
        except NOTHING_WRITTEN:
            if self._cache is not None:  # nothing changed: the cached values stand
                await self._cache.release_leases(leases)
            raise
        except BaseException:
            await asyncio.shield(self.discard(ids))
            raise
        await asyncio.shield(self._write_through(committed(result), token))
        return result

    async def _write_through(self, records: Sequence[R], token: str) -> None:
        """Store committed records under the leases :meth:`write` took."""
        self.forget([codec.record_id(r) for r in records])
        if not self._cache or not records:
            return
        writes = [
            CacheWrite(
                key=self._keys.value(self._kind, codec.record_id(r)),
                lease_key=self._keys.lease(self._kind, codec.record_id(r)),
                version=r.version,
                entry=codec.encode_entry(r),
                ttl_ms=self._ttl.ttl_ms(True),
            )
            for r in records
        ]
        outcomes = await self._cache.compare_and_set(writes, token, write_through=True)
        # A get that started while the cache write was in flight may have read the old
        # entry: gets issued from now on must not join it.
        self.forget([codec.record_id(r) for r in records])
        await self._cache.announce([(self._kind, codec.record_id(r)) for r in records])
        self._count_writes(outcomes)
        await self._check_claims(writes, outcomes)

    async def discard(self, ids: Sequence[str]) -> None:
        """Drop the cached entries of ``ids`` and void fills in flight (their leases)."""
        await drop(self._cache, [self], ids)

    def entry_keys(self, ids: Sequence[str]) -> list[str]:
        """The value and lease keys of ``ids``: what dropping an entry deletes."""
        return [
            k
            for i in ids
            for k in (self._keys.value(self._kind, i), self._keys.lease(self._kind, i))
        ]

    def forget(self, ids: Sequence[str]) -> None:
        """Let later gets of ``ids`` start a new load instead of joining one in flight, and
        evict them from the near cache (refusing its fills begun before now)."""
        for id_ in ids:
            self._inflight.pop(id_, None)
        if self._near is not None:
            self._near.invalidate([(self._kind, i) for i in ids])

    async def aclose(self) -> None:
        """Wait for loads in flight (their callers are waiting on them anyway)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def drop(
    cache: CacheBackend | None, reads: Sequence[ReadThrough[Any]], ids: Sequence[str]
) -> None:
    """Drop the entries of ``ids`` of every kind in ``reads``, with one DEL (their keys share
    the id's hash slot), and void fills in flight (their leases go too).

    Loads in flight in this process are detached before and after, so no get issued after
    this returns shares one that read the old entry.
    """
    for r in reads:
        r.forget(ids)
    if cache is not None:
        await cache.delete([k for r in reads for k in r.entry_keys(ids)])
        for r in reads:
            r.forget(ids)
        await cache.announce([(r.kind, i) for r in reads for i in ids])


def _resolve(future: asyncio.Future[tuple[R | None, str]], record: R | None, source: str) -> None:
    if not future.done():
        future.set_result((record, source))


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
