"""An async service built on securecache.

Run with the ids of a few securities::

    SECURECACHE_DATABASE_URL=postgresql://... SECURECACHE_REDIS_URL=redis://... \\
        python examples/async_service.py SEC000001 SEC000002 SEC000003

It reads through the cache (one security, a batch of scores, a page of the listing) and then
adjusts one score the safe way for a read-modify-write: conditionally on the version it read
(``if_version``), re-reading and retrying when another writer got there first. Two such
adjustments run at once, so one of them always meets a ``ConflictError``. It prints a JSON
summary; :func:`main` returns the same summary.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from securecache import ConflictError, Score, ScoreUpdate, SecureCache, Settings

MAX_ATTEMPTS = 10


class ScoreService:
    """The operations a scoring service offers, each a thin layer over the cache."""

    def __init__(self, cache: SecureCache) -> None:
        self._cache = cache
        self.conflicts = 0
        """Writes that lost a race and were retried."""

    async def profile(self, security_id: str) -> dict[str, Any] | None:
        """A security with its score (None for an unknown id); both reads share one batch."""
        security, score = await asyncio.gather(
            self._cache.securities.get(security_id), self._cache.scores.get(security_id)
        )
        if security is None:
            return None
        return {
            "id": security.id,
            "symbol": security.symbol,
            "version": security.version,
            "score_version": None if score is None else score.version,
        }

    async def average_growth(self, security_ids: Sequence[str]) -> float | None:
        """The mean growth over the securities that have a score: one get_many."""
        scores = await self._cache.scores.get_many(security_ids)
        if not scores:
            return None
        return sum(s.growth for s in scores.values()) / len(scores)

    async def first_page(self, limit: int) -> list[str]:
        """The ids on the first page of the listing (keyset-paginated, in id order)."""
        page = await self._cache.securities.list(limit=limit)
        return [security.id for security in page.items]

    async def raise_growth(self, security_id: str, step: float) -> Score:
        """Add ``step`` to growth (wrapping at 10), never overwriting a write we did not see."""
        for _ in range(MAX_ATTEMPTS):
            current = await self._cache.scores.get(security_id)
            if current is None:
                # No score yet: create one; if_version cannot apply to a row that is not there.
                return await self._cache.scores.put(
                    security_id, ScoreUpdate(growth=step, value=5, quality=5, momentum=5)
                )
            wanted = ScoreUpdate(
                growth=round((current.growth + step) % 10, 6),
                value=current.value,
                quality=current.quality,
                momentum=current.momentum,
            )
            try:
                return await self._cache.scores.put(security_id, wanted, if_version=current.version)
            except ConflictError:
                self.conflicts += 1  # someone else wrote first: read again and recompute
                await asyncio.sleep(0.01)
        raise RuntimeError(f"gave up on {security_id} after {MAX_ATTEMPTS} conflicts")


async def run(security_ids: Sequence[str]) -> dict[str, Any]:
    """The demo: reads, a listing, then two racing read-modify-writes of the first id."""
    async with SecureCache(Settings.from_env()) as cache:
        service = ScoreService(cache)
        profiles = [await service.profile(i) for i in security_ids]
        growth = await service.average_growth(security_ids)
        listed = await service.first_page(limit=10)

        target = security_ids[0]
        before = await cache.scores.get(target)
        first, second = await asyncio.gather(
            service.raise_growth(target, 0.5), service.raise_growth(target, 0.25)
        )
        after = await cache.scores.get(target)
        return {
            "profiles": profiles,
            "average_growth": growth,
            "first_page": listed,
            "adjusted": {
                "id": target,
                "version_before": None if before is None else before.version,
                "versions_written": sorted([first.version, second.version]),
                "version_after": None if after is None else after.version,
                "growth_after": None if after is None else after.growth,
                "conflicts": service.conflicts,
            },
        }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo for the ids in ``argv`` (default: the command line); print and return it."""
    ids = list(sys.argv[1:] if argv is None else argv)
    if not ids:
        raise SystemExit("usage: async_service.py SECURITY_ID [SECURITY_ID ...]")
    summary = asyncio.run(run(ids))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
