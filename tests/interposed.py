"""A Redis backend that forwards to the real one, with a pause of the test's choosing before a
fill's or a write-through's compare-and-set: the seam (``SecureCache(wrap_redis=...)``)
through which tests stage races, without patching private names."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from securecache.cache import CacheWrite
from securecache.keys import Kind
from securecache.readthrough import CacheBackend

Hook = Callable[[Sequence[CacheWrite]], Awaitable[None]]


class Interposed:
    """Forwards every call to ``inner``; awaits a hook before each compare-and-set."""

    def __init__(self, inner: CacheBackend) -> None:
        self.inner = inner
        self.before_fill: Hook | None = None
        """Runs after a fill read PostgreSQL, before it stores what it read."""
        self.before_write_through: Hook | None = None
        """Runs after a write committed, before it stores the new version."""
        self.before_entries: Callable[[Sequence[str]], Awaitable[None]] | None = None
        """Runs before the hit path's MGET of these keys."""

    async def entries(self, keys: Sequence[str]) -> list[bytes | None] | None:
        if self.before_entries is not None:
            await self.before_entries(keys)
        return await self.inner.entries(keys)

    async def lookup(
        self, pairs: Sequence[tuple[str, str]], token: str, lease_ms: int
    ) -> list[tuple[bytes | None, int]] | None:
        return await self.inner.lookup(pairs, token, lease_ms)

    async def take_leases(
        self, lease_keys: Sequence[str], token: str, ttl_ms: int, *, take_over: bool = False
    ) -> list[bool] | None:
        return await self.inner.take_leases(lease_keys, token, ttl_ms, take_over=take_over)

    async def release_leases(self, lease_keys: Sequence[str]) -> None:
        await self.inner.release_leases(lease_keys)

    async def compare_and_set(
        self, writes: Sequence[CacheWrite], token: str, *, write_through: bool = False
    ) -> list[int]:
        hook = self.before_write_through if write_through else self.before_fill
        if hook is not None:
            await hook(writes)
        return await self.inner.compare_and_set(writes, token, write_through=write_through)

    async def delete(self, keys: Sequence[str]) -> bool:
        return await self.inner.delete(keys)

    async def settle(self, targets: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[int]:
        return await self.inner.settle(targets, ttl_ms)

    async def announce(self, keys: Sequence[tuple[Kind, str]]) -> None:
        await self.inner.announce(keys)


class HeldFills:
    """Parks every fill between its PostgreSQL read and its Redis write until released.

    Pass ``wrap_redis=held.wrap`` to ``SecureCache``; ``read`` is set when a fill has read
    PostgreSQL, ``calls`` counts the fills that got that far.
    """

    def __init__(self, *, armed: bool = True) -> None:
        self.armed = armed
        """Fills pass straight through while this is false."""
        self.calls = 0
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    def wrap(self, inner: CacheBackend) -> CacheBackend:
        backend = Interposed(inner)
        backend.before_fill = self._hold
        return backend

    async def _hold(self, _writes: Sequence[CacheWrite]) -> None:
        if not self.armed:
            return
        self.calls += 1
        self.read.set()
        await self.release.wait()


def delaying(
    before_fill: Hook | None = None,
    before_write_through: Hook | None = None,
    before_entries: Callable[[Sequence[str]], Awaitable[None]] | None = None,
) -> Callable[[CacheBackend], CacheBackend]:
    """A ``wrap_redis`` that runs the given hooks before fills, write-throughs and the hit
    path's MGETs."""

    def wrap(inner: CacheBackend) -> CacheBackend:
        backend = Interposed(inner)
        backend.before_fill = before_fill
        backend.before_write_through = before_write_through
        backend.before_entries = before_entries
        return backend

    return wrap
