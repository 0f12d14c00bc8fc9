"""The caching policy: read-through with batching, single-flight and leases.

I/O-free orchestration over :mod:`securecache.store` and :mod:`securecache.cache`.

Every read is a batch. A ``get`` or ``get_many`` that finds nothing in flight leaves at once,
in its caller's task: a lone read waits for nothing. While a load is in flight, or while the
callers of a batch just answered are waking, the reads issued meanwhile form the batch of the
current event-loop iteration (the first of them
schedules its flush with ``call_soon``, no timer) and share its round trips: one MGET for the
hits; for the rest, one lookup script that returns the entries and takes the leases of the
misses, one PostgreSQL query and one pipelined fill. A key already being loaded is not loaded
again: later callers wait for the same load (single-flight), each on a future of its own, so
a herd on a cold key makes one query per process; a miss whose lease another process holds
waits briefly for that process's fill, so a herd across the fleet makes about one. With a
near cache, hits are served from memory before any of this (:mod:`securecache.nearcache`).

Writes live here too, beside the reads whose fills they must void: :meth:`ReadThrough.write`
runs the whole lease sequence of a write-through (take the leases over, commit, then store or
give back or drop), and :func:`drop` drops the records of an id. The Redis side
is reached only through :class:`CacheBackend`, so tests can put a fault or a delay in between
without touching private names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
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
from securecache.models import Score, Security, validate_id
from securecache.nearcache import MISSING, NearCache
from securecache.telemetry import SOURCE, Telemetry

log = logging.getLogger(__name__)

R = TypeVar("R", Security, Score)
T = TypeVar("T")
Fetch = Callable[[Sequence[str]], Awaitable[dict[str, R]]]
Waiters = list[asyncio.Future[tuple[R | None, str]]]
"""The callers waiting for one id of a batch (none when only the batch's own task does)."""
Batch = dict[str, Waiters[R]]

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

    async def entries(self, keys: Sequence[str]) -> list[bytes | None] | None: ...

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


SCRIPT_FIRST_MISS_RATE = 0.5
"""Above this share of misses in recent batches, a batch skips the MGET (see _lookup)."""
MISS_RATE_WEIGHT = 0.2
"""Weight of the latest batch in that moving average."""

MAX_BATCH = models.MAX_BATCH
"""Most keys in one round trip; bigger batches are split (bounded Redis and SQL arguments)."""


CLOCK_SKEW_MS = 60_000
"""How far another process's clock may run ahead of this one's: an entry may expire this much
later than this process would let it (beyond that it was not written by the library)."""


class TTLPolicy:
    """Entry lifetimes with jitter, so entries written together do not expire together; and
    the window in which an entry's own expiry must fall to be served."""

    def __init__(
        self,
        ttl: float,
        negative_ttl: float,
        jitter: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl_ms = ttl * 1000
        self._negative_ms = negative_ttl * 1000
        self._jitter = jitter
        self._clock = clock
        self._longest_ms = int(max(self._ttl_ms, self._negative_ms) * (1 + jitter)) + 1

    def ttl_ms(self, present: bool) -> int:
        base = self._ttl_ms if present else self._negative_ms
        return max(1, int(base * (1 + random.uniform(0, self._jitter))))

    def entry(self, record: R | None) -> tuple[bytes, int]:
        """The Redis entry of ``record`` (None: absent) and its TTL in ms."""
        ttl_ms = self.ttl_ms(record is not None)
        return codec.encode_entry(record, self.now_ms() + ttl_ms), ttl_ms

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def window(self) -> tuple[int, int]:
        """(now, horizon) in Unix ms: an entry is served if it expires in between."""
        now = self.now_ms()
        return now, now + self._longest_ms + CLOCK_SKEW_MS


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
        self._pending: Batch[R] = {}
        """The next batch: ids and the futures of the callers waiting for them."""
        self._inflight: Batch[R] = {}
        """Every id being loaded (or about to be), with its waiters: later gets join."""
        self._miss_rate = 0.0
        """Moving average of the share of a batch that missed: picks the first round trip."""
        self._waking = False
        """True from a batch answering waiting callers until they have woken."""
        self._lookups = 0
        """Loads in their first round trip (the lookup, or the query when Redis did not
        answer). While there is one, gets join the batch of this loop turn; with none, a get
        leaves at once."""
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._attrs = {"securecache.kind": str(kind)}
        """The attributes of this kind's counters."""

    @property
    def kind(self) -> Kind:
        return self._kind

    def recall(self, id_: object) -> Any:
        """The near cache's record of ``id_`` (None: known absent), or ``MISSING``.

        ``id_`` need not be validated: the near cache holds valid ids only, so a hit proves
        it valid, and anything else is ``MISSING`` (to be validated before it is loaded).
        Safe from the sync twin's caller threads (:meth:`NearCache.get` is).
        """
        near = self._near
        if near is None or type(id_) is not str:
            return MISSING
        return near.get((self._kind, id_))

    def remembered(self, ids: Sequence[str]) -> tuple[dict[str, R | None], list[str]]:
        """What the near cache holds of ``ids`` (None: known absent), and the other ids.

        Safe from the sync twin's caller threads (:meth:`NearCache.get` is).
        """
        near = self._near
        if near is None:
            return {}, list(ids)
        found: dict[str, R | None] = {}
        rest: list[str] = []
        kind = self._kind
        for id_ in ids:
            hit = near.get((kind, id_))
            if hit is MISSING:
                rest.append(id_)
            else:
                found[id_] = hit
        return found, rest

    async def get(self, id_: str) -> R | None:
        """One record: from the near cache, or (its id validated) loaded at once, or with the
        gets around it."""
        hit = self.recall(id_)
        if hit is not MISSING:
            return hit  # type: ignore[no-any-return]
        id_ = validate_id(id_)
        telemetry = self._telemetry
        if not telemetry.tracing():  # no span to open or describe: the common case, kept short
            record, _ = await self.load(id_)
            return record
        with telemetry.call_span(f"securecache {self._namespace}.get") as span:
            record, source = await self.load(id_)
            span.set_attribute(SOURCE, source)
            return record

    async def get_many(self, ids: Iterable[str]) -> dict[str, R]:
        """The records among ``ids`` that exist, keyed by id."""
        unique = list(dict.fromkeys(ids))
        found: dict[str, R] = {}
        if self._near is not None:
            remembered, unique = self.remembered(unique)
            found = {i: r for i, r in remembered.items() if r is not None}
        if not unique:
            return found
        with self._telemetry.call_span(f"securecache {self._namespace}.get_many") as span:
            span.set_attribute("securecache.ids", len(unique))
            found.update(await self.load_many(unique))
            return found

    def load(self, id_: str, *, missed: bool = False) -> Awaitable[tuple[R | None, str]]:
        """The record of ``id_`` (None: absent) and where it came from, past the near cache.

        With nothing forming and nothing in flight, this read leaves at once, in the caller's
        own task (no added loop turn); reads arriving meanwhile form the next batch.
        ``missed``: the caller has just found no servable entry in Redis (the sync twin's
        hit path), so the load leaves at once and starts with the lookup script.
        """
        waiters = self._inflight.get(id_)
        if waiters is None and (missed or self._alone()):
            return self._run_one(id_, missed)
        # The future itself, not a coroutine around it: one frame fewer to resume per get.
        return self._waiter(id_, waiters)

    async def _run_one(self, id_: str, missed: bool) -> tuple[R | None, str]:
        batch: Batch[R] = {id_: []}
        self._inflight[id_] = batch[id_]
        return (await self._run(batch, script_first=missed))[id_]

    async def load_many(self, ids: Sequence[str], *, missed: bool = False) -> dict[str, R]:
        """The records among the distinct ``ids`` that exist, past the near cache (and see
        :meth:`load` for ``missed``)."""
        inflight = self._inflight
        if missed or self._alone():
            joined = (
                {i: self._waiter(i, inflight[i]) for i in ids if i in inflight} if inflight else {}
            )
            fresh: Batch[R] = (
                {i: [] for i in ids if i not in joined} if joined else {i: [] for i in ids}
            )
            inflight.update(fresh)
            if not joined:
                answers = await self._run(fresh, script_first=missed)
            else:
                both: list[Any] = await asyncio.gather(
                    self._run(fresh, script_first=missed), *joined.values()
                )
                answers = {**both[0], **dict(zip(joined, both[1:], strict=True))}
            return {i: record for i in ids if (record := answers[i][0]) is not None}
        results = await asyncio.gather(*(self._waiter(i, inflight.get(i)) for i in ids))
        return {i: r for i, (r, _) in zip(ids, results, strict=True) if r is not None}

    def _alone(self) -> bool:
        """Whether a read may leave at once: nothing is forming or in flight, and no batch's
        callers are waking (their reads arrive together)."""
        return not self._lookups and not self._pending and not self._waking

    def _woken(self) -> None:
        self._waking = False

    def _waiter(self, id_: str, waiters: Waiters[R] | None) -> asyncio.Future[tuple[R | None, str]]:
        """A future for ``id_`` from the load in flight for it (``waiters``), or else from
        the next batch."""
        loop = asyncio.get_running_loop()
        if waiters is None:
            waiters = self._next_batch(id_)
        # A future of this caller's own: cancelling the caller cancels only its wait, never
        # the load the other callers share.
        future: asyncio.Future[tuple[R | None, str]] = loop.create_future()
        waiters.append(future)
        return future

    def _next_batch(self, id_: str) -> Waiters[R]:
        """The waiters of ``id_`` in the batch forming now (joined, or made).

        A batch not sent yet reads after everything done so far, so it can be joined even
        when a write detached ``id_`` from the loads in flight (``forget`` leaves the
        forming batch alone): replacing its list would strand the callers already in it.
        """
        waiters = self._pending.get(id_)
        if waiters is None:
            waiters = self._pending[id_] = []
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        self._inflight[id_] = waiters
        return waiters

    def _flush(self) -> None:
        """Send the batch that formed during this turn of the event loop."""
        self._flush_scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        items = list(batch.items())
        for start in range(0, len(items), MAX_BATCH):
            task = asyncio.get_running_loop().create_task(
                self._load(dict(items[start : start + MAX_BATCH]))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _load(self, batch: Batch[R]) -> None:
        """A batch in a task of its own; its callers wait on their futures."""
        for id_, waiters in batch.items():  # unless a write detached it since it formed
            self._inflight.setdefault(id_, waiters)
        with contextlib.suppress(Exception):  # the waiters have it
            await self._run(batch)

    async def _run(
        self, batch: Batch[R], *, script_first: bool = False
    ) -> dict[str, tuple[R | None, str]]:
        """Load ``batch`` (ids and the futures waiting for them, which get their answer as it
        comes, registered in flight by the caller) and return every answer.

        On a failure, only the ids still waiting get the error: values already served from
        Redis stand, so cached reads keep working while PostgreSQL is down. When the task
        running the batch is cancelled (its caller gave up), the ids other callers wait for
        are loaded again in the next batch.
        """
        answers: dict[str, tuple[R | None, str]] = {}
        try:
            await self._read_through(batch, answers, script_first=script_first)
        except asyncio.CancelledError:
            self._requeue({i: w for i, w in batch.items() if i not in answers})
            raise
        except BaseException as exc:
            for id_, waiters in batch.items():
                if id_ not in answers:
                    for future in waiters:
                        if not future.done():
                            future.set_exception(exc)
            raise
        finally:
            if len(answers) < len(batch):  # answered ids left when answered
                inflight = self._inflight
                for id_, waiters in batch.items():
                    # Not detached, nor handed on by _requeue:
                    if id_ not in answers and inflight.get(id_) is waiters:
                        del inflight[id_]
        return answers

    def _requeue(self, batch: Batch[R]) -> None:
        """Hand the callers still waiting in an abandoned batch to the next load of their
        ids: the forming batch, or a load that started since (after a write detached the
        id), which reads later than the abandoned one would have."""
        for id_, waiters in batch.items():
            waiting = [f for f in waiters if not f.done()]
            if not waiting:
                continue
            current = self._inflight.get(id_)
            if current is waiters or current is None:
                self._next_batch(id_).extend(waiting)
            else:
                current.extend(waiting)

    def _answer(
        self,
        batch: Batch[R],
        answers: dict[str, tuple[R | None, str]],
        records: Iterable[tuple[str, R | None]],
        source: str,
    ) -> None:
        """Answer ids of ``batch`` with their records, which came from ``source`` (None:
        known absent, whose source is "absent")."""
        inflight = self._inflight
        woken = False
        for id_, record in records:
            answer = answers[id_] = (record, source) if record is not None else (None, "absent")
            waiters = batch[id_]
            if waiters:
                woken = True
                for future in waiters:
                    if not future.done():
                        future.set_result(answer)
            if inflight.get(id_) is waiters:
                del inflight[id_]  # answered: a later get starts afresh
        if woken and not self._waking:
            # Its callers wake in the next loop turn, and their next reads (and this task's)
            # should make one batch, not a lone read first and then the rest.
            self._waking = True
            asyncio.get_running_loop().call_soon(self._woken)

    async def _read_through(
        self, batch: Batch[R], answers: dict[str, tuple[R | None, str]], *, script_first: bool
    ) -> None:
        """Redis first (the entries, and a lease for each miss, in one round trip); the
        misses from PostgreSQL in one query; then the fills under those leases.

        Hits are answered right after the lookup, so a PostgreSQL failure reaches only the
        misses; misses are answered once their fill is done (a caller that next looks in
        Redis finds the value there). A miss whose lease another process holds waits a
        little for that process's fill instead of querying too (one query per key across
        the fleet).
        """
        ticket = self._near.ticket() if self._near is not None else 0
        # Counted while in flight (see _lookups): the lookup, or the query when Redis gave no
        # answer (absent, failing), so that reads keep travelling in batches then too.
        self._lookups += 1
        waiting = True
        try:
            misses, leases, corrupt, token = await self._lookup(
                batch, answers, ticket, script_first=script_first
            )
            if not misses:
                return
            if any(leases[i] is not None for i in misses):
                self._leave()
                waiting = False
            contested = [i for i in misses if leases[i] == LEASE_HELD]
            if contested and self._lease_wait > 0:
                filled = await self._await_fills(contested, token, leases)
                self._answer(batch, answers, filled.items(), "redis")
                for id_, record in filled.items():
                    self._remember(id_, record, ticket)
                misses = [i for i in misses if i not in filled]
                if not misses:
                    return
            rows = await self._fetch(misses)
        finally:
            if waiting:
                self._leave()
        writes = [
            self._cache_write(id_, rows.get(id_), replaces=corrupt.get(id_, b""))
            for id_ in misses
            if leases[id_] == LEASE_TAKEN
        ]
        stored: set[str] = set()
        if writes and self._cache:
            outcomes = await self._cache.compare_and_set(writes, token)
            self._count_writes(outcomes)
            await self._check_claims(writes, outcomes)
            stored = {w.key for w, o in zip(writes, outcomes, strict=True) if o == STORED}
        found = [(i, rows.get(i)) for i in misses]
        self._answer(batch, answers, found, "postgres")
        # The near cache follows Redis: a fill it refused (lease lost) is not kept either.
        for id_, record in found:
            if self._keys.value(self._kind, id_) in stored:
                self._remember(id_, record, ticket)

    def _cache_write(self, id_: str, record: R | None, replaces: bytes = b"") -> CacheWrite:
        """The compare-and-set that caches ``record`` (None: absent) for ``id_``."""
        key, lease_key = self._keys.pair(self._kind, id_)
        entry, ttl_ms = self._ttl.entry(record)
        return CacheWrite(
            key=key,
            lease_key=lease_key,
            version=codec.entry_version(record),
            entry=entry,
            ttl_ms=ttl_ms,
            replaces=replaces,
        )

    def _leave(self) -> None:
        """The first round trip of a load is back."""
        self._lookups -= 1

    def _remember(self, id_: str, record: R | None, ticket: int) -> None:
        """Keep what was just read in the near cache, unless invalidated since ``ticket``."""
        if self._near is not None:
            self._near.put((self._kind, id_), record, ticket)

    async def _lookup(
        self,
        batch: Batch[R],
        answers: dict[str, tuple[R | None, str]],
        ticket: int,
        *,
        script_first: bool,
    ) -> tuple[list[str], dict[str, int | None], dict[str, bytes], str]:
        """Answer the hits; return the misses, their lease states (None: Redis did not
        answer), the corrupt entries seen (which a fill may replace) and the token of the
        leases taken (drawn only when a lease is asked for).

        The hits come from one MGET, Redis's cheapest read. Only what it did not serve is
        looked up again, by the script that also takes the leases (a fill may have landed in
        between), so a miss costs one round trip more than a hit. While most recent reads
        missed (a cold cache, a scan), the MGET would mostly come back empty: the batch then
        goes to the script at once, which serves its hits as well (the entries without a TTL
        aside) and leases its misses in one round trip.
        """
        ids = list(batch)
        kind = self._kind
        attrs = self._attrs
        cache = self._cache
        if cache is None:
            self._telemetry.misses.add(len(ids), attrs)
            return ids, dict.fromkeys(ids), {}, ""
        rest = ids
        if not script_first and self._miss_rate < SCRIPT_FIRST_MISS_RATE:
            raws = await cache.entries(self._keys.values(kind, ids))
            if raws is None:  # Redis does not answer: all misses, no leases
                self._telemetry.misses.add(len(ids), attrs)
                return ids, dict.fromkeys(ids), {}, ""
            rest = self._serve(batch, answers, ticket, ids, raws)
            if not rest:
                self._miss_rate *= 1 - MISS_RATE_WEIGHT
                return [], {}, {}, ""
        token = secrets.token_hex(8)
        pairs = [self._keys.pair(kind, i) for i in rest]
        answer = await cache.lookup(pairs, token, self._lease_ms)
        if answer is None:
            self._telemetry.misses.add(len(rest), attrs)
            return rest, dict.fromkeys(rest), {}, token
        looked = {i: raw for i, (raw, _) in zip(rest, answer, strict=True)}
        misses = self._serve(batch, answers, ticket, rest, [raw for raw, _ in answer])
        leases: dict[str, int | None] = {
            i: lease for i, (_, lease) in zip(rest, answer, strict=True)
        }
        corrupt: dict[str, bytes] = {}
        for id_ in misses:
            raw = looked[id_]
            if raw is not None and self._corrupt(raw, id_):
                corrupt[id_] = raw
                self._telemetry.corrupt.add(1, attrs)
                log.warning("ignoring a corrupt cache entry for %s %s", kind, id_)
        if misses:
            self._telemetry.misses.add(len(misses), attrs)
        self._miss_rate += MISS_RATE_WEIGHT * (len(misses) / len(ids) - self._miss_rate)
        # Entries the script took for servable but that fail our checks need a lease too.
        unleased = [i for i in misses if leases[i] == NO_LEASE_NEEDED]
        if unleased:
            leases.update(await self._take_leases(unleased, token))
        return misses, leases, corrupt, token

    def _serve(
        self,
        batch: Batch[R],
        answers: dict[str, tuple[R | None, str]],
        ticket: int,
        ids: Sequence[str],
        raws: Sequence[bytes | None],
    ) -> list[str]:
        """Answer each id whose entry (``raws``, in the order of ``ids``) can be served;
        return the others."""
        hits, rest = self.servable(ids, raws)
        self._answer(batch, answers, hits, "redis")
        if self.keeps:
            self.keep(hits, ticket)
        return rest

    def servable(
        self, ids: Sequence[str], raws: Sequence[bytes | None]
    ) -> tuple[list[tuple[str, R | None]], list[str]]:
        """The entries read from Redis (``raws``, in the order of ``ids``) that may be
        served, as (id, record or None for a known-absent id), and the ids of the others;
        counted as hits.

        Free of I/O and of loop state, so the sync twin serves its hits with it on the
        caller's thread, under the same rules.
        """
        now_ms, horizon_ms = self._ttl.window()
        hits: list[tuple[str, R | None]] = []
        rest: list[str] = []
        record_type, absent = self._type, codec.ABSENT
        entries = codec.decode_entries(record_type, ids, raws, now_ms=now_ms, horizon_ms=horizon_ms)
        for id_, entry in zip(ids, entries, strict=True):
            if entry is absent:
                hits.append((id_, None))
            elif type(entry) is record_type:  # records are final classes
                hits.append((id_, entry))
            else:
                rest.append(id_)
        if hits:
            self._telemetry.hits.add(len(hits), self._attrs)
        return hits, rest

    def keep(self, hits: Sequence[tuple[str, R | None]], ticket: int) -> None:
        """Keep served hits in the near cache (unless invalidated since ``ticket``) and offer
        them to the audit. On the loop's thread."""
        for id_, record in hits:
            self._remember(id_, record, ticket)
        if self._audit is not None and hits:
            self._audit.sample(self._kind, list(hits))

    @property
    def keeps(self) -> bool:
        """Whether :meth:`keep` has anything to do (a near cache or an audit)."""
        return self._near is not None or self._audit is not None

    @property
    def namespace(self) -> str:
        """``securities`` or ``scores``: the facade's name for this kind (in span names)."""
        return self._namespace

    @property
    def telemetry(self) -> Telemetry:
        return self._telemetry

    @property
    def keys(self) -> KeyScheme:
        return self._keys

    @property
    def near(self) -> NearCache | None:
        return self._near

    def _corrupt(self, raw: bytes, id_: str) -> bool:
        now_ms, horizon_ms = self._ttl.window()
        entry = codec.decode_entry(self._type, raw, id_, now_ms=now_ms, horizon_ms=horizon_ms)
        return entry is codec.CORRUPT

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
            now_ms, horizon_ms = self._ttl.window()
            for id_, (raw, lease) in zip(pending, answer, strict=True):
                entry = codec.decode_entry(
                    self._type, raw, id_, now_ms=now_ms, horizon_ms=horizon_ms
                )
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
        writes = [self._cache_write(codec.record_id(r), r) for r in records]
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
