"""The near cache: a bounded in-process LRU in front of Redis, opt-in.

Hot reads then cost a dictionary look-up instead of a Redis round trip, without giving up the
consistency rules. The near cache holds only what the policy has just read from Redis or
PostgreSQL and knows to be current, and lets go of it on four occasions:

- **Invalidation across processes.** Every write-through, invalidation, listener notice and
  dropped entry publishes the ids on a Redis channel of the key prefix; every process
  subscribes and evicts them. The writing process evicts its own before it publishes, so it
  reads its own writes.
- **A fill that races an invalidation does not land.** A read takes a ticket before it looks
  in Redis; it may store what it found only if no invalidation of that id came in since the
  ticket (the same rule as the Redis leases, in memory).
- **Losing the channel** (disconnect, or not yet subscribed) clears the near cache and
  bypasses it until the subscription is back: invalidations sent meanwhile were lost.
- **A hard maximum age** (``local_cache_ttl_seconds``) on every entry: the documented bound
  on staleness, whatever happens to the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from securecache.keys import Kind
from securecache.telemetry import Telemetry

log = logging.getLogger(__name__)

NearKey = tuple[Kind, str]
MISSING: Final = object()
"""What :meth:`NearCache.get` returns when it holds nothing usable for the key."""
RECENT_INVALIDATIONS: Final = 65_536
"""Invalidated keys remembered for the fill-race rule; older tickets are refused wholesale."""
RECONNECT_SECONDS: Final = (0.1, 0.5, 1.0, 2.0)


class NearCache:
    """The in-process LRU and its invalidation rules (I/O-free; see :class:`Subscription`)."""

    def __init__(
        self,
        size: int,
        max_age: float,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._size = size
        self._max_age = max_age
        self._telemetry = telemetry
        self._hits = telemetry.near_hits
        self._misses = telemetry.near_misses
        self._clock = clock
        self._entries: OrderedDict[NearKey, tuple[Any, float]] = OrderedDict()
        self._seq = 0
        self._recent: OrderedDict[NearKey, int] = OrderedDict()
        self._floor = 0
        """Tickets older than this are refused: their invalidations are no longer tracked."""
        self.usable = False
        """True while the invalidation channel is subscribed."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: NearKey) -> Any:
        """The record (or None for a known-absent id), or MISSING.

        Safe to call from another thread than the loop's (the sync twin does): every step is
        one dictionary operation, and an entry evicted in between is simply not found.
        """
        if not self.usable:
            return MISSING
        found = self._entries.get(key)
        if found is not None and self._clock() - found[1] <= self._max_age:
            try:  # noqa: SIM105 - contextlib.suppress would cost a context manager per hit
                self._entries.move_to_end(key)
            except KeyError:  # evicted meanwhile, by another thread: still a hit
                pass
            self._hits.tick()
            return found[0]
        if found is not None:  # past its maximum age
            self._entries.pop(key, None)
        self._misses.tick()
        return MISSING

    def ticket(self) -> int:
        """Taken before looking in Redis: what :meth:`put` checks invalidations against."""
        return self._seq

    def put(self, key: NearKey, value: Any, ticket: int) -> bool:
        """Store unless ``key`` was invalidated (or the cache cleared) since ``ticket``."""
        if not self.usable or ticket < self._floor or self._recent.get(key, -1) > ticket:
            return False
        self._entries[key] = (value, self._clock())
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
            self._telemetry.near_evictions.add(1)
        return True

    def invalidate(self, keys: Iterable[NearKey]) -> None:
        """Evict ``keys`` and refuse every fill of them whose ticket predates this."""
        self._seq += 1
        for key in keys:
            self._entries.pop(key, None)
            self._recent[key] = self._seq
            self._recent.move_to_end(key)
        while len(self._recent) > RECENT_INVALIDATIONS:
            _, seq = self._recent.popitem(last=False)
            self._floor = max(self._floor, seq + 1)

    def clear(self, *, usable: bool) -> None:
        """Drop everything; refuse every fill begun before now; set whether to serve."""
        self._seq += 1
        self._entries.clear()
        self._recent.clear()
        self._floor = self._seq
        self.usable = usable


def encode_keys(keys: Sequence[NearKey]) -> bytes:
    """A channel message: ``kind id`` pairs, one per line."""
    return "\n".join(f"{kind.value} {id_}" for kind, id_ in keys).encode()


def decode_keys(message: bytes) -> list[NearKey]:
    """The keys of a channel message; anything malformed is ignored (a Redis user may
    publish on the channel, and an eviction is the worst a forged message can cause)."""
    keys: list[NearKey] = []
    for line in message.decode(errors="replace").splitlines():
        kind, _, id_ = line.partition(" ")
        with contextlib.suppress(ValueError):
            keys.append((Kind(kind), id_))
    return keys


class Subscription:
    """The task that keeps the near cache subscribed to the invalidation channel."""

    def __init__(self, near: NearCache, connect: Callable[[], Any], channel: str) -> None:
        self._near = near
        self._connect = connect
        self._channel = channel
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        """Set while subscribed (tests wait on it)."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="securecache-near-cache"
            )

    async def stop(self, grace: float = 5.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=grace)
        self._near.clear(usable=False)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: bypassed already, subscribe again
                delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                log.warning("near cache: invalidation channel lost (%s); bypassed", exc)
                await asyncio.sleep(delay)

    async def _listen(self) -> None:
        client = self._connect()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            # Invalidations published before the subscription took effect were not seen.
            self._near.clear(usable=True)
            self.subscribed.set()
            async for message in pubsub.listen():
                if message.get("type") == "message" and isinstance(message.get("data"), bytes):
                    self._near.invalidate(decode_keys(message["data"]))
            raise ConnectionError("the subscription ended")
        finally:
            # At once, before any reconnect delay: invalidations may be missed from now on.
            self.subscribed.clear()
            self._near.clear(usable=False)
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()
