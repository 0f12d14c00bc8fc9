"""The consistency audit (Meta's Polaris idea): a sampled share of cache hits is checked
against PostgreSQL in the background, so operators can see how often the cache disagrees.

For each sampled hit the audit reads the row's current version. A cache entry may lawfully
trail PostgreSQL for a moment (a write has committed and its write-through is on its way), so
an entry older than the row counts only once the row has been at its version for longer than
the grace period. Everything else that disagrees counts at once: an entry claiming a version
PostgreSQL does not hold (forged, or left over from a restored database), or a record cached
for an id PostgreSQL does not have. Each disagreement is counted by kind, logged with the id
and both versions, and the entry is dropped (the next read fills it from PostgreSQL).

Off unless ``audit_sample_rate`` is above 0; at 0 nothing extra runs on the hit path.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from securecache.codec import ABSENT_VERSION
from securecache.keys import Kind
from securecache.telemetry import Telemetry

log = logging.getLogger(__name__)

Versions = Callable[[Kind, Sequence[str]], Awaitable[dict[str, tuple[int, datetime]]]]
"""(kind, ids) -> {id: (version, updated_at)} of the rows that exist (one query)."""
Drop = Callable[[Kind, Sequence[str]], Awaitable[None]]
"""Drops the cached entries of ids of one kind."""

STALE: Final = "stale"
"""Older than a row that has kept its version for longer than the grace (or "absent" for a
row that exists)."""
NEWER_THAN_DATABASE: Final = "newer_than_database"
"""Claims a version PostgreSQL has never held: forged, or from a restored database."""
ROW_MISSING: Final = "row_missing"
"""A record cached for an id PostgreSQL does not have (deleted with nobody listening, or
planted)."""


class Audit:
    """Samples hits and checks them in background tasks (bounded in number)."""

    def __init__(
        self,
        *,
        rate: float,
        grace: float,
        versions: Versions,
        drop: Drop,
        telemetry: Telemetry,
        max_tasks: int = 16,
    ) -> None:
        self._rate = rate
        self._grace = timedelta(seconds=grace)
        self._versions = versions
        self._drop = drop
        self._telemetry = telemetry
        self._max_tasks = max_tasks
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def sample(self, kind: Kind, hits: Sequence[tuple[str, int]]) -> None:
        """Maybe check some of these hits, as (id, cached version); never waits."""
        if self._rate <= 0 or not hits:
            return
        chosen = hits if self._rate >= 1 else [h for h in hits if random.random() < self._rate]
        if not chosen or len(self._tasks) >= self._max_tasks:
            return  # under load the audit skips rather than queue work behind the reads
        task = asyncio.get_running_loop().create_task(self._check(kind, chosen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, kind: Kind, hits: Sequence[tuple[str, int]]) -> None:
        attrs = {"securecache.kind": str(kind)}
        try:
            rows = await self._versions(kind, [i for i, _ in hits])
        except Exception as exc:  # the audit must never hurt the reads it watches
            log.debug("audit: could not read versions (%s)", exc)
            return
        self._telemetry.audit_checked.add(len(hits), attrs)
        now = datetime.now(UTC)
        bad: list[str] = []
        for id_, cached in hits:
            row = rows.get(id_)
            settled = row is not None and now - row[1] > self._grace
            problem: str | None = None
            if cached == ABSENT_VERSION:
                problem = STALE if settled else None  # "absent", but the row exists
            elif row is None:
                problem = ROW_MISSING
            elif cached > row[0]:
                problem = NEWER_THAN_DATABASE
            elif cached < row[0] and settled:
                problem = STALE
            if problem is not None:
                bad.append(id_)
                kind_attrs = {**attrs, "securecache.audit.kind": problem}
                self._telemetry.audit_inconsistent.add(1, kind_attrs)
                log.warning(
                    "audit: %s %s is %s in the cache: cached version %d, PostgreSQL %s",
                    kind,
                    id_,
                    problem,
                    cached,
                    "has no row" if row is None else f"version {row[0]}",
                )
        if bad:
            await self._drop(kind, bad)

    async def aclose(self) -> None:
        """Wait for checks in flight (each is one query and maybe one DEL)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
