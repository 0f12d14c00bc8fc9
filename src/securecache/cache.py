"""Redis, the shared cache: the only module with Redis commands and Lua.

Every write goes through one compare-and-set script (:data:`CAS_SCRIPT`): a value is stored
only while the writer's lease stands and nothing newer is there. The lease closes the races a
version check alone cannot: an invalidation, a flush or a Redis restart empties the key while
an older fill or a delayed write-through is in flight; all of them also remove the lease, so
that write is refused. Readers take a lease only if none is held (``SET NX``) before they read
PostgreSQL (in the same script call as the lookup, :data:`LOOKUP_SCRIPT`); writers take it
over (plain ``SET``) before they commit, which voids every fill in flight. A writer that finds
its lease gone cannot know whether its version is still the newest, so it deletes the entry
instead of storing it: the next read fills from PostgreSQL.

Redis is an optimisation, never a dependency: every failure is caught here, counted, and
reported as "no answer" (a miss, a refused lease, a write not done). That includes the errors
of redis-py's cluster client that are no ``RedisError``. A circuit breaker
(:mod:`securecache.breaker`) stops calling a Redis that keeps failing; keys whose update could
not be made are remembered and deleted as soon as Redis answers again, so no stale value
survives an outage.

Each operation has one deadline (twice the client's socket timeout, ``redis_timeout_seconds``:
room for a new connection and one round trip), whatever happens inside it: the retry on a
fresh connection, loading a script Redis lost, a cluster client refreshing its view of the
slots. A hung Redis therefore costs a caller at most that deadline per round trip, never one
timeout per attempt; a timed-out attempt is not retried at all, only a dead connection is.

The invalidations owed from an outage are bounded (:data:`MAX_DEBTS` keys). When an outage
outgrows that, the list is dropped and instead this process stops reading Redis for as long as
any entry written before that moment can live (the longest entry TTL): reads go to
PostgreSQL. What is given up is only the early clean-up of those entries for other processes,
which then see them for at most one TTL: the same bound as when a writer exits before it
could replay its list.

On a Redis Cluster every key of one security id carries the id as a hash tag, so the value
and its lease share a slot and each script runs on the node that holds both; lookups are one
script call per slot, pipelines are split per node by redis-py, and scripts run with
``EVALSHA`` through ``execute_command`` (redis-py's cluster pipeline refuses its ``evalsha``).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import attrs
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)
from redis.retry import Retry as SyncRetry

from securecache.breaker import CircuitBreaker
from securecache.deadlines import Deadlines
from securecache.keys import Kind
from securecache.nearcache import encode_keys
from securecache.telemetry import Telemetry

log = logging.getLogger(__name__)

T = TypeVar("T")

# Redis may be shared with other services, so an entry is only a claim. An entry without a TTL
# was not written by this library: every script treats it as if the key were empty.

# KEYS: value and lease key of each id, in pairs (each pair in one hash slot; on a cluster a
# call carries the ids of one slot). ARGV[1] lease token, ARGV[2] lease TTL in ms.
# For each pair, two results: the entry (false when none, or none with a TTL) and whether a
# lease was taken (1), is held by another (0), or is not needed (-1: an entry to serve). A
# lease without a TTL was not set by the library (it would block fills for ever): taken over.
# A miss thus costs one round trip for the lookup and the lease together.
LOOKUP_SCRIPT: Final = """
local out = {}
for i = 1, #KEYS, 2 do
  local entry = redis.call('GET', KEYS[i])
  if entry and redis.call('PTTL', KEYS[i]) < 0 then entry = false end
  out[#out + 1] = entry
  if entry and string.sub(entry, -2) ~= '|~' then
    out[#out + 1] = -1
  elseif redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[#out + 1] = 1
  elseif redis.call('PTTL', KEYS[i + 1]) == -1 then
    redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2])  -- a lease without a TTL: not ours
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# KEYS[1] value key, KEYS[2] lease key (same hash slot).
# ARGV[1] version, ARGV[2] entry, ARGV[3] TTL in ms, ARGV[4] lease token,
# ARGV[5] "1" for a write-through (drop the entry when the lease is lost),
# ARGV[6] a corrupt entry the reader saw, which may be replaced whatever version it claims.
# Returns 0 stored, -1 refused (lease lost), or N > 0: refused because the entry claims
# version N, newer than this one (the caller checks that claim against PostgreSQL).
CAS_SCRIPT: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[4] then
  if ARGV[5] == '1' then redis.call('DEL', KEYS[1], KEYS[2]) end
  return -1
end
redis.call('DEL', KEYS[2])
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[6] and redis.call('PTTL', KEYS[1]) >= 0 then
  local v = tonumber(string.match(current, '^(%d+)|'))
  if v and v > tonumber(ARGV[1]) then return v end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 0
"""

# KEYS[1] value key, KEYS[2] lease key; ARGV[1] the version PostgreSQL holds now (0: no
# row), ARGV[2] TTL in ms. Unless the entry holds exactly that version, it is replaced by a
# floor ("<version>|~": the truth is at least this), which refuses every older write still in
# flight while leaving the lease to the writer of this version or a newer one. An entry
# claiming a newer version than PostgreSQL's is replaced too: it was forged, or it belongs to
# a write committed after PostgreSQL was read, whose loss costs one miss. No row: the entry
# and the lease are dropped, and no key is created.
SETTLE_SCRIPT: Final = """
if ARGV[1] == '0' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
local current = redis.call('GET', KEYS[1])
if current and redis.call('PTTL', KEYS[1]) >= 0 then
  local v = tonumber(string.match(current, '^(%d+)|'))
  if v and v == tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|~', 'PX', ARGV[2])
return 1
"""


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


LOOKUP_SHA: Final = _sha(LOOKUP_SCRIPT)
CAS_SHA: Final = _sha(CAS_SCRIPT)
SETTLE_SHA: Final = _sha(SETTLE_SCRIPT)
SCRIPTS: Final = {LOOKUP_SHA: LOOKUP_SCRIPT, CAS_SHA: CAS_SCRIPT, SETTLE_SHA: SETTLE_SCRIPT}
"""Every script the library runs, by digest: what the ACL lets service users EVALSHA, and
what ``securecache redis-scripts`` loads as an administrator."""

REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)
"""Everything that means "Redis did not answer", the cluster client's own errors included
(``RedisClusterException`` is no ``RedisError``): caught, counted, and failed open."""

REPLAY_CHUNK: Final = 500
"""Keys per DEL when replaying invalidations owed from an outage."""
MAX_DEBTS: Final = 50_000
"""Most keys owed a deletion that one process remembers (a few MB); see the module doc."""
DEFAULT_ENTRY_TTL_BOUND: Final = 330.0
"""Longest life of an entry, in seconds, unless told: the default TTL and its largest jitter."""

STORED: Final = 0
REFUSED_LEASE: Final = -1
"""Results of a compare-and-set; a positive result is the newer version the entry claims."""
NO_LEASE_NEEDED: Final = -1
LEASE_HELD: Final = 0
LEASE_TAKEN: Final = 1

RedisClient = aioredis.Redis | RedisCluster
ScriptCall = tuple[str, Sequence[str], Sequence[Any]]
"""(script digest, keys, arguments) of one EVALSHA."""


@attrs.frozen
class CacheWrite:
    """One compare-and-set: store ``entry`` (of ``version``) at ``key`` for ``ttl_ms``."""

    key: str
    lease_key: str
    version: int
    entry: bytes
    ttl_ms: int
    replaces: bytes = b""
    """A corrupt entry seen by the reader: replaced even if it claims a higher version."""


class ScriptsMissingError(RedisError):
    """Redis lacks the library's scripts and this user may not load them (fail open)."""


# redis-py 7 moved lib_name/lib_version into driver_info and warns about the old names.
_NO_CLIENT_SETINFO: Final[dict[str, None]] = (
    {"driver_info": None}
    if importlib.util.find_spec("redis.driver_info") is not None
    else {"lib_name": None, "lib_version": None}
)


def _no_maintenance_notifications() -> dict[str, Any]:
    """redis-py 7+ sends CLIENT MAINT_NOTIFICATIONS on every new connection (for Redis
    Enterprise): a round trip more per connection, an unknown subcommand to Redis 7.0 and a
    command the ACL refuses (and logs) on Redis 6.2. Turned off where it exists."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # redis-py older than 7
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def connect(url: str, *, cluster: bool, timeout: float, max_connections: int) -> RedisClient:
    """A redis-py asyncio client tuned to fail fast: PostgreSQL can always answer instead.

    No socket timeout: :class:`RedisCache` puts one deadline over each whole operation
    instead. redis-py bounds every send of a client with a socket timeout by
    ``asyncio.wait_for``, which on Python 3.11 starts a Task per command (measured: about a
    third of the CPU of a cached GET); a cancelled send or read disconnects the connection,
    so the deadline leaves no half-read reply behind.
    """
    common: dict[str, Any] = {
        "socket_timeout": None,
        "socket_connect_timeout": timeout,
        # One retry on a fresh connection heals a pool whose connections died with a
        # restarted Redis; more would only delay the fall-through to PostgreSQL. A timeout is
        # not retried: a Redis that did not answer in time will not answer the retry either.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "max_connections": max_connections,
        # No CLIENT SETINFO on connect: one command fewer for the ACL to allow.
        **_NO_CLIENT_SETINFO,
        **_no_maintenance_notifications(),
    }
    if cluster:
        return RedisCluster.from_url(url, **common)
    return aioredis.Redis.from_url(url, **common)


def connect_sync(
    url: str, *, cluster: bool, timeout: float, max_connections: int
) -> redis.Redis | redis.RedisCluster:
    """A blocking redis-py client for the sync twin's hit path, as quick to give up as
    :func:`connect`'s (here the socket timeout is the only bound, and costs no Task)."""
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # As the async client: one retry on a fresh connection, none after a timeout.
        "retry": SyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "max_connections": max_connections,
        **_NO_CLIENT_SETINFO,
        **_no_maintenance_notifications(),
    }
    if cluster:
        return redis.RedisCluster.from_url(url, **common)
    return redis.Redis.from_url(url, **common)


class SyncReader:
    """The sync twin's hit path: one blocking MGET on the caller's thread, failing open.

    It reads and never writes, so it needs none of :class:`RedisCache`'s machinery; it stays
    out of the way whenever that machinery is at work (breaker open, deletions owed after an
    outage, reads bypassing Redis, scripts missing): then the caller goes through the loop.
    """

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        cache: RedisCache,
        telemetry: Telemetry,
        on_failure: Callable[[], None],
    ) -> None:
        """``on_failure`` is told of each failed read (to count it against the breaker, on
        the loop's thread)."""
        self._client = client
        self._cache = cache
        self._telemetry = telemetry
        self._on_failure = on_failure

    def entries(self, keys: Sequence[str]) -> list[bytes | None] | None:
        """The entries at ``keys``, or None: Redis did not answer, or the loop's path must."""
        if self._cache.degraded:
            return None
        with self._telemetry.client_span("MGET", "redis", "MGET") as span:
            try:
                if isinstance(self._client, redis.RedisCluster):
                    replies = self._client.mget_nonatomic(keys)
                else:
                    replies = self._mget(self._client, keys)
            except REDIS_FAILURES as exc:
                self._telemetry.redis_errors.add(1, {"db.operation.name": "MGET"})
                span.set_attribute("error.type", type(exc).__name__)
                log.warning("redis MGET failed (%s); serving through the event loop", exc)
                self._on_failure()
                return None
        return [r if isinstance(r, bytes) else None for r in replies]

    @staticmethod
    def _mget(client: redis.Redis, keys: Sequence[str]) -> list[Any]:
        """``MGET`` on a connection of the client's pool, sent and read directly, as
        :meth:`RedisCache._mget` does (redis-py's per-command wrapper cost a sync hit about 10
        us of CPU), with the same one retry on a fresh connection after Redis dropped one.

        The connection is checked out of the pool for each read, with the pool's checks (a
        forked child gets connections of its own; one left with an unread reply is replaced),
        rather than kept as :class:`ReadConnections` keeps the loop's: callers' threads come
        and go, and those checks would have to be made here again.
        """
        pool = client.connection_pool
        encoded = [key.encode() for key in keys]
        for attempt in range(2):
            connection = pool.get_connection()
            try:
                connection.send_command("MGET", *encoded)  # type: ignore[no-untyped-call]
                return connection.read_response()  # type: ignore[no-any-return]
            except RedisConnectionError:
                connection.disconnect()  # type: ignore[no-untyped-call]
                if attempt:
                    raise
            finally:
                pool.release(connection)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._client.close()


class ReadConnections:
    """A few connections of the client's pool kept checked out between the hit path's reads.

    redis-py 8's pool spends about 9 us of CPU on a checkout and its release (a lock, its
    observability records, a readiness check on the socket; measured with a loop of
    ``get_connection`` and ``release``), as much as this library's whole policy for a hit. A
    connection comes back here only after a complete request and reply, so it holds nothing
    unread, which is what that check guards against; any other ending (an error, a deadline,
    a cancellation) disconnects it and gives it back to the pool. When Redis drops a
    connection (a restart), the others waiting here are dropped too (:meth:`drop_idle`), and
    the next ones come from the pool, which connects afresh. At most two wait here, so
    the pool's other users are never short of connections because of them.
    """

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        self._pool = pool
        # One in eight of the pool, at most 2 (a loop's reads go in one or two MGETs at a
        # time), none from a pool of fewer than 8.
        self._keep = min(2, pool.max_connections // 8)
        self._idle: list[aioredis.connection.AbstractConnection] = []

    async def take(self) -> aioredis.connection.AbstractConnection:
        if self._idle:
            return self._idle.pop()
        connection: aioredis.connection.AbstractConnection = (
            await self._pool.get_connection()  # type: ignore[no-untyped-call]
        )
        return connection

    async def give_back(
        self, connection: aioredis.connection.AbstractConnection, *, clean: bool
    ) -> None:
        """``clean``: the exchange on it completed; otherwise it is disconnected."""
        if clean and len(self._idle) < self._keep:
            self._idle.append(connection)
            return
        try:
            if not clean:
                await connection.disconnect()
        finally:
            await self._pool.release(connection)

    async def drop_idle(self) -> None:
        """Disconnect the connections waiting here and give them back to the pool (after a
        dropped connection, and when the client closes)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                await connection.disconnect()
            finally:
                await self._pool.release(connection)


class RedisCache:
    """The Redis round trips the policy needs, each failing open."""

    def __init__(
        self,
        client: RedisClient,
        telemetry: Telemetry,
        breaker: CircuitBreaker,
        *,
        channel: str | None = None,
        deadline: float | None = None,
        max_debts: int = MAX_DEBTS,
        entry_ttl_bound: float = DEFAULT_ENTRY_TTL_BOUND,
    ) -> None:
        """``deadline``: longest time one operation may take, retries included (default: the
        client's socket timeout). ``max_debts``: most keys remembered for deletion after an
        outage. ``entry_ttl_bound``: longest life of any entry (TTL plus jitter), which is how
        long reads bypass Redis once the debts overflowed."""
        self._client = client
        self._channel = channel
        """The near caches' invalidation channel; None when no process uses a near cache."""
        self._cluster = isinstance(client, RedisCluster)
        self._reads = (
            None if self._cluster else ReadConnections(client.connection_pool)  # type: ignore[union-attr]
        )
        """Where the hit path's MGETs find a connection (see :meth:`_mget`)."""
        self.scripts_missing = False
        """True while Redis lacks the scripts and this user may not load them."""
        self._telemetry = telemetry
        self._breaker = breaker
        self._deadline = Deadlines(deadline if deadline is not None else _socket_timeout(client))
        self._max_debts = max_debts
        self._entry_ttl_bound = entry_ttl_bound
        self._dirty: dict[str, int] = {}
        """Keys whose update failed (and when, as a sequence number): deleted once Redis
        answers again. A key owed again while its deletion is in flight keeps its debt."""
        self._debt_seq = 0
        self._replaying = asyncio.Lock()
        self._bypass_until = 0.0
        """Reads do not trust Redis before this (monotonic) time: the debts overflowed."""

    @property
    def degraded(self) -> bool:
        """True while the breaker is open, invalidations wait to be replayed, reads bypass
        Redis after an outage too large to remember, or the scripts are missing."""
        return self._breaker.is_open or bool(self._dirty) or self.bypassing or self.scripts_missing

    @property
    def bypassing(self) -> bool:
        """True while reads skip Redis because the debts of an outage overflowed."""
        return time.monotonic() < self._bypass_until

    @property
    def debts(self) -> int:
        """Keys currently owed a deletion."""
        return len(self._dirty)

    def _owe(self, keys: Iterable[str], ttl_ms: int = 0) -> None:
        """Remember keys to delete once Redis answers; past the bound, bypass reads instead."""
        for key in keys:
            self._debt_seq += 1
            self._dirty[key] = self._debt_seq
        if len(self._dirty) > self._max_debts:
            bound = max(self._entry_ttl_bound, ttl_ms / 1000)
            log.warning(
                "redis: %d invalidations owed exceed the bound of %d; reads bypass Redis "
                "for %.0f s (the longest entry life) instead",
                len(self._dirty),
                self._max_debts,
                bound,
            )
            self._dirty.clear()
            self._bypass_until = max(self._bypass_until, time.monotonic() + bound)

    async def close(self) -> None:
        if self._reads is not None:
            await self._reads.drop_idle()
        await self._client.aclose()

    def note_failure(self) -> None:
        """A failure met outside this object's own calls (the sync twin's hit path): it
        counts against the breaker like one of ours."""
        self._breaker.failure()

    async def _call(self, operation: str, fn: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Run one round trip under the breaker and one deadline; on any Redis failure
        return ``fallback``."""
        if not self._breaker.allow():
            return fallback
        with self._telemetry.client_span(operation, "redis", operation) as span:
            try:
                # Deletions owed from an outage go first: nothing is read from or written
                # to Redis while an entry that may be stale is still there.
                if self._dirty:
                    await self._replay_invalidations()
                with self._deadline:
                    result = await fn()
            except REDIS_FAILURES as exc:
                self._breaker.failure()
                self._telemetry.redis_errors.add(1, {"db.operation.name": operation})
                span.set_attribute("error.type", type(exc).__name__)
                log.warning("redis %s failed (%s); serving from PostgreSQL", operation, exc)
                return fallback
            except BaseException:
                self._breaker.abandon()  # cancelled: says nothing of Redis, frees the probe
                raise
        self._breaker.success()
        return result

    async def ping(self) -> bool:
        async def run() -> bool:
            return bool(await self._client.ping())

        return await self._call("PING", run, False)

    async def take_leases(
        self, lease_keys: Sequence[str], token: str, ttl_ms: int, *, take_over: bool = False
    ) -> list[bool] | None:
        """Take a lease on each key: readers only where none is held (SET NX), writers always.

        False where another holds it; None when Redis did not answer.
        """

        async def run() -> list[bool]:
            pipe = self._client.pipeline(transaction=False)
            for key in lease_keys:
                pipe.set(key, token, nx=not take_over, px=ttl_ms)
            return [bool(r) for r in await pipe.execute()]

        operation = "SET" if take_over else "SET NX"
        return await self._call(operation, run, None)

    async def release_leases(self, lease_keys: Sequence[str]) -> None:
        """Give leases back after a failed write, so fills need not wait for them to expire."""

        async def run() -> None:
            await self._client.delete(*lease_keys)

        await self._call("DEL", run, None)

    async def entries(self, keys: Sequence[str]) -> list[bytes | None] | None:
        """The entries at ``keys`` (None where there is none): the hit path, one MGET (per
        slot on a cluster). None when Redis does not answer, or while reads bypass it.

        Unlike :meth:`lookup` this cannot see whether a key has a TTL: an entry's own expiry
        (:mod:`securecache.codec`) bounds how long a plant without one could be served.
        """
        if self.bypassing:
            return None
        client = self._client
        if self._cluster:
            replies = await self._call(
                "MGET",
                lambda: client.mget_nonatomic(keys),  # type: ignore[union-attr]
                None,
            )
        else:
            replies = await self._call("MGET", lambda: self._mget(keys), None)
        if replies is None:
            return None
        return [r if isinstance(r, bytes) else None for r in replies]

    async def _mget(self, keys: Sequence[str]) -> list[Any]:
        """``MGET`` on a connection of the client's pool, sent and read directly.

        redis-py's per-command wrapper (its retry object, observability hooks and response
        callbacks) and its pool's checkout cost a cached read more CPU than this library's
        whole policy (``python -m bench.profile_reads``); the hit path needs none of it but
        the retry, done here the same way: a connection that died with a restarted Redis is
        dropped and the command sent once more, on a fresh one. The connection comes from
        :class:`ReadConnections`.
        """
        reads = self._reads
        assert reads is not None  # a single Redis: a cluster's MGETs go through its client
        # Bytes, which redis-py's encoder passes through at its first check (a str takes five).
        encoded = [key.encode() for key in keys]
        for attempt in range(2):
            connection = await reads.take()
            clean = False
            try:
                await connection.send_command("MGET", *encoded)
                reply = await connection.read_response()
                clean = True
                return reply  # type: ignore[no-any-return]
            except RedisConnectionError:
                if attempt:
                    raise
                await reads.drop_idle()  # Redis dropped one: the others may be gone too
            finally:
                await reads.give_back(connection, clean=clean)
        raise AssertionError("unreachable")  # pragma: no cover

    async def lookup(
        self, pairs: Sequence[tuple[str, str]], token: str, lease_ms: int
    ) -> list[tuple[bytes | None, int]] | None:
        """For each (value key, lease key): the entry, and a lease for each miss.

        One script call per hash slot (one in all on a single Redis). Each result is the
        entry (None: no entry, or none this library wrote) and LEASE_TAKEN, LEASE_HELD or
        NO_LEASE_NEEDED. None when Redis does not answer, or while reads bypass it.
        """
        if self.bypassing:
            return None

        def calls() -> list[ScriptCall]:
            return [
                (LOOKUP_SHA, [k for pair in group for k in pair], [token, lease_ms])
                for group in self._by_slot(pairs)
            ]

        async def run() -> list[tuple[bytes | None, int]]:
            groups = self._by_slot(pairs)
            replies = await self._scripts(calls())
            found: dict[tuple[str, str], tuple[bytes | None, int]] = {}
            for group, reply in zip(groups, replies, strict=True):
                for index, pair in enumerate(group):
                    entry, flag = reply[2 * index], int(reply[2 * index + 1])
                    found[pair] = (entry if isinstance(entry, bytes) else None, flag)
            return [found[pair] for pair in pairs]

        return await self._call("EVALSHA lookup", run, None)

    def _by_slot(self, pairs: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
        """The pairs grouped by cluster slot (one group on a single Redis)."""
        if not self._cluster:
            return [list(pairs)]
        groups: dict[int, list[tuple[str, str]]] = {}
        for pair in pairs:
            groups.setdefault(key_slot(pair[0].encode()), []).append(pair)
        return list(groups.values())

    async def compare_and_set(
        self, writes: Sequence[CacheWrite], token: str, *, write_through: bool = False
    ) -> list[int]:
        """Run the CAS script for each write in one pipeline; results as in CAS_SCRIPT.

        A write is stored only while the lease ``token`` stands; a write-through that lost
        its lease deletes the entry instead. Write-throughs that could not reach Redis come
        back refused and are remembered, to be deleted once Redis answers.
        """
        if not writes:
            return []
        flag = "1" if write_through else "0"
        calls = [
            (
                CAS_SHA,
                [w.key, w.lease_key],
                [w.version, w.entry, w.ttl_ms, token, flag, w.replaces],
            )
            for w in writes
        ]

        async def run() -> list[int]:
            return [int(r) for r in await self._scripts(calls)]

        no_answer: list[int] = []
        results = await self._call("EVALSHA cas", run, no_answer)
        if not results:
            if write_through:
                self._owe(
                    (k for w in writes for k in (w.key, w.lease_key)),
                    max(w.ttl_ms for w in writes),
                )
            return [REFUSED_LEASE] * len(writes)
        return results

    async def settle(self, targets: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[int]:
        """For each (key, lease key, version PostgreSQL holds): floor the entry unless it holds
        exactly that version; drop it when the row is gone (version 0).

        Used for changes announced by PostgreSQL; keys that cannot be reached are
        remembered and deleted once Redis answers.
        """
        if not targets:
            return []
        calls = [(SETTLE_SHA, [key, lease], [version, ttl_ms]) for key, lease, version in targets]

        async def run() -> list[int]:
            return [int(r) for r in await self._scripts(calls)]

        no_answer: list[int] = []
        results = await self._call("EVALSHA settle", run, no_answer)
        if not results:
            self._owe((k for key, lease, _ in targets for k in (key, lease)), ttl_ms)
        return results

    async def _scripts(
        self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Run EVALSHA calls in one pipeline (raises on any failure, for :meth:`_call`).

        ``execute_command`` rather than ``pipe.evalsha``: redis-py's cluster pipeline refuses
        the latter. A Redis that lost the scripts (restart, flush) gets them loaded again if
        this user may; a service user may not (it runs the library's scripts and no other),
        and then the cache fails open until an administrator runs ``securecache
        redis-scripts``, which :attr:`scripts_missing` and the log say.
        """
        if len(calls) == 1:
            # One call (a lone lookup, one write): a plain command, not a pipeline, whose
            # machinery costs more than the call itself in redis-py.
            sha, keys, args = calls[0]
            try:
                result = await self._client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            except NoScriptError:
                await self._load_scripts({sha})
                result = await self._client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            self.scripts_missing = False
            return [result]
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            for sha, keys, args in calls:
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            missing = {
                sha
                for (sha, _, _), r in zip(calls, results, strict=True)
                if isinstance(r, NoScriptError)
            }
            if attempt == 1 and missing:
                await self._load_scripts(missing)
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            self.scripts_missing = False
            return list(results)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _load_scripts(self, shas: set[str]) -> None:
        try:
            for sha in sorted(shas):
                await self._client.script_load(SCRIPTS[sha])
        except NoPermissionError as exc:
            if not self.scripts_missing:
                log.error(
                    "redis has not loaded securecache's scripts and this user may not load "
                    "them: serving from PostgreSQL until an administrator runs "
                    "`securecache redis-scripts`"
                )
            self.scripts_missing = True
            raise ScriptsMissingError("securecache's Redis scripts are not loaded") from exc

    async def announce(self, keys: Sequence[tuple[Kind, str]]) -> None:
        """Tell every process's near cache that ``keys`` changed (when a channel is set).

        Best effort: a lost message leaves a near cache stale for at most its entries'
        maximum age, which is the documented bound.
        """
        channel = self._channel
        if channel is None or not keys:
            return
        message = encode_keys(keys)

        async def run() -> None:
            await self._client.publish(channel, message)

        await self._call("PUBLISH", run, None)

    async def delete(self, keys: Sequence[str]) -> bool:
        """Delete keys (values and leases); remembered for later if Redis does not answer."""

        async def run() -> bool:
            await self._client.delete(*keys)
            return True

        done = await self._call("DEL", run, False)
        if not done:
            self._owe(keys)
        return done

    async def _replay_invalidations(self) -> None:
        """Delete the keys whose updates were lost while Redis was away (raises if it fails).

        One replay at a time (the others wait for it rather than repeat it), in chunks, each
        under the deadline of one operation. A key owed again while its DEL was in flight
        stays owed.
        """
        async with self._replaying:
            while self._dirty:
                chunk = list(itertools.islice(self._dirty.items(), REPLAY_CHUNK))
                with self._deadline:
                    await self._client.delete(*(key for key, _ in chunk))
                for key, seq in chunk:
                    if self._dirty.get(key) == seq:
                        del self._dirty[key]
                log.info("redis: replayed %d invalidations owed from an outage", len(chunk))


def _socket_timeout(client: RedisClient) -> float:
    """The deadline of one operation: twice the client's socket timeout, or its connect
    timeout when it has none (a connection to open and a round trip; a lone round trip on a
    busy machine may take a whole timeout)."""
    kwargs = client.get_connection_kwargs()
    for name in ("socket_timeout", "socket_connect_timeout"):
        timeout = kwargs.get(name)
        if isinstance(timeout, int | float) and timeout > 0:
            return 2 * float(timeout)
    return 1.0
